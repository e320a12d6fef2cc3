"""Quiet by default: libraries' start-up banners, hints and progress bars that say nothing about the run are hidden.

`tuneforge --verbose` shows everything. The choice reaches the processes tuneforge launches (torchrun workers)
through TUNEFORGE_VERBOSE. Deprecation warnings that tuneforge's own calls would trigger are fixed at the call;
what is hidden here is raised inside the libraries, whatever the caller does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "TUNEFORGE_VERBOSE"

# Logger name → start of the messages dropped from it.
NOISY_LOGGERS: dict[str, tuple[str, ...]] = {
    # DeepSpeed's import-time guess on machines without a GPU, on stdout; transformers imports DeepSpeed where it is
    # installed, also for runs that do not use it.
    "DeepSpeed": ("Setting accelerator to CPU",),
    # bitsandbytes' hint on CPUs with AVX-512 BF16 that lack the optional `kernels` package; peft imports
    # bitsandbytes, so every LoRA run printed it.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
}
# (category, start of message) of warnings raised inside the libraries.
LIBRARY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # peft 0.21 (PeftModel.__init__) reads transformers' deprecated `is_gradient_checkpointing` alias; remove once
    # peft reads `is_activation_checkpointing`.
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
)


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of the given texts."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def is_verbose() -> bool:
    """Whether `--verbose` (here or in the process that launched this one) asked to show everything."""
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose: bool = False) -> None:
    """Hide the libraries' noise unless `verbose`; cheap (imports no library), so every command can call it."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose():
        return
    for name, starts in NOISY_LOGGERS.items():
        # A filter on the logger object survives the library's own setup (DeepSpeed resets level and handlers).
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))
    for category, start in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)


def hide_transformers_bars() -> None:
    """Hide transformers' per-tensor "Loading weights" / "Writing model shards" bars; hub download bars stay."""
    if is_verbose():
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    downloads_shown = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also turns the hub's bars off ...
    if downloads_shown:
        enable_progress_bars()  # ... which are real progress on long downloads


@contextlib.contextmanager
def no_datasets_bars() -> Iterator[None]:
    """Hide datasets' bars inside the block: for bookkeeping (saving, filtering), not work a user waits on."""
    import datasets

    if is_verbose() or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()
