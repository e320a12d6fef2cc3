"""The flags of `tuneforge eval`, as one value: what eval/models.py opens and eval/run.py runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.model.load import DeviceMap

ENGINES = ("transformers", "vllm")  # the built-in engine, or offline vLLM (generation tasks only)


@dataclass(frozen=True)
class EvalRequest:
    """The flags of `tuneforge eval`."""

    run: Path | None = None
    model: str | None = None
    adapter: Path | None = None
    tasks: list[str] | None = None
    suite: str | None = None
    baseline: str = "base"  # base | none | a run folder | an endpoint URL
    limit: int | None = None
    think: bool | None = None
    out: Path | None = None
    data_dir: Path | None = None
    endpoint: str | None = None
    served_model: str | None = None
    api_key_file: Path | None = None
    baseline_model: str | None = None
    engine: str = "transformers"  # one of ENGINES
    concurrency: int = 8  # requests in flight per endpoint
    nproc: int = 1  # processes (GPUs), each with its own model copy
    quantize: bool | None = None  # --load-in-4bit / --no-quantize (None: a QLoRA run's base as it was trained)
    device_map: DeviceMap | None = None  # --device-map / --max-memory: the built-in engine over several GPUs
