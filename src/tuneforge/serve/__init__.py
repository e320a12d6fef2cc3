"""Serving: the built-in OpenAI-compatible server (app.py) and one-command vLLM / SGLang launchers (launch.py)."""
