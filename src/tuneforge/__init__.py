"""tuneforge: fine-tune Qwen3-family models from one YAML config."""

__version__ = "0.1.0"
