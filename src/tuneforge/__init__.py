"""tuneforge: fine-tune Qwen3-family models from one YAML config."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`tuneforge.train(...)`: the notebook API, imported on first use so `import tuneforge` stays light."""
    if name == "train":
        import importlib

        return importlib.import_module("tuneforge.train")
    raise AttributeError(f"module 'tuneforge' has no attribute {name!r}")
