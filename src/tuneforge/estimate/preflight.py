"""The train pre-flight: print the estimate and the step count, and stop before any work when memory cannot fit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.estimate.memory import GIB, Job, estimate, gib, load_shape
from tuneforge.estimate.steps import steps_of

# Declares the memory of the device training runs on (GB), instead of asking torch / the OS: for tests, or for a
# GPU shared with other work.
MEMORY_ENV = "TUNEFORGE_DEVICE_MEMORY_GB"


def device_memory() -> tuple[float, str]:
    """(bytes, what they are) of the memory a training process may use here: declared, GPU 0's, or free RAM."""
    declared = os.environ.get(MEMORY_ENV)
    if declared:
        try:
            return float(declared) * GIB, f"{MEMORY_ENV}={declared}"
        except ValueError:
            raise UserError(f"{MEMORY_ENV}={declared!r}: expected a number of GB, e.g. 24") from None
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return float(total), f"{torch.cuda.get_device_name()} memory"
    import psutil

    return float(psutil.virtual_memory().available), "available RAM"


def preflight(cfg: Config, train: Any, log: Callable[..., None] = print) -> None:
    """Log the memory estimate and step count over the prepared `train` set; one-line UserError when it cannot fit.

    Training calls it once the data is prepared and before any weights load (every process alike, so all stop).
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = steps_of(cfg, train)
    # Rows are never wider than the longest prepared sample: size them by the data, not by data.max_length.
    est = estimate(Job.from_config(cfg, load_shape(cfg.model), device, steps.longest, steps.tokens))
    limit, what = device_memory()
    log(
        f"estimate: {gib(est.total)} per device ("
        + ", ".join(f"{k} {gib(v)}" for k, v in est.parts.items() if v)
        + f") of {gib(limit)} {what}"
    )
    log(f"steps: {steps.describe()}")
    if est.total > limit:
        raise UserError(
            f"pre-flight: the run needs about {gib(est.total)} per device but {what} is {gib(limit)}; "
            "see `tuneforge estimate CONFIG` for what to change, or pass --no-preflight (train.preflight=false) "
            "to try anyway"
        )
