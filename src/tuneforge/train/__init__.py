"""Training: build and run the Trainer for each objective; launch (torchrun, DeepSpeed, FSDP).

`tuneforge.train(config, **overrides)` is the notebook API (train/notebook.py). This package has the same name, and
importing it sets `tuneforge.train` to the package, so the package itself is callable and forwards to the API.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, config, **overrides):
        """tuneforge.train(config_or_path, **overrides) → the finished run (see tuneforge.train.notebook.train)."""
        from tuneforge.train.notebook import train

        return train(config, **overrides)


sys.modules[__name__].__class__ = _CallablePackage
