"""What `tuneforge estimate` and the train pre-flight print: the memory table, the step count, a verdict per GPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.estimate.memory import GIB, Estimate, Job, estimate, gib, load_shape
from tuneforge.estimate.steps import StepPlan, plan_steps

GPU_SIZES = (24, 48, 80)  # GB classes users rent: RTX 4090 / A10 class, L40S / A6000, A100 / H100


def _halve_batch(job: Job) -> tuple[Job, str] | None:
    batch = job.train.per_device_batch_size
    if batch == 1:
        return None
    accumulation = job.train.gradient_accumulation * 2
    changed = job.but(train={"per_device_batch_size": batch // 2, "gradient_accumulation": accumulation})
    return changed, f"train.per_device_batch_size={batch // 2} train.gradient_accumulation={accumulation}"


def _set(section: str, key: str, value: object, when: Callable[[Job], bool]):
    def change(job: Job) -> tuple[Job, str] | None:
        if not when(job):
            return None
        shown = str(value).lower() if isinstance(value, bool) else value
        return job.but(**{section: {key: value}}), f"{'distributed' if section == 'dist' else section}.{key}={shown}"

    return change


# Tried in order, cumulatively, until the job fits: cheapest in speed and quality first.
CHANGES: tuple[Callable[[Job], tuple[Job, str] | None], ...] = (
    _set("train", "loss", "chunked", lambda j: j.train.loss != "chunked"),
    _set("train", "gradient_checkpointing", True, lambda j: not j.train.gradient_checkpointing),
    _halve_batch,
    _halve_batch,
    _halve_batch,
    _halve_batch,
    _halve_batch,
    _set(
        "train",
        "optim",
        "adamw_8bit",
        lambda j: j.train.optim in ("adamw_torch", "paged_adamw_32bit") and j.strategy.name != "deepspeed",
    ),
    _set("method", "type", "lora", lambda j: j.method.type == "full"),
    _set("method", "type", "qlora", lambda j: j.method.type == "lora"),
    _set("dist", "strategy", "deepspeed", lambda j: j.world_size > 1 and j.strategy.name != "deepspeed"),
    _set("dist", "deepspeed", "zero3", lambda j: j.world_size > 1 and j.dist.deepspeed == "zero2"),
    _set("dist", "deepspeed", "zero3_offload", lambda j: j.world_size > 1 and j.dist.deepspeed == "zero3"),
)


def fit(job: Job, limit: float) -> list[str] | None:
    """The config changes (key=value), tried cheapest first, that bring `job` under `limit` bytes; None if none do."""
    changes: dict[str, str] = {}  # key → its last value: halving the batch twice shows the final batch only
    for change in CHANGES:
        if estimate(job).total <= limit:
            break
        result = change(job)
        if result is not None:
            job, text = result
            for item in text.split():
                key, _, value = item.partition("=")
                changes[key] = value
    return [f"{k}={v}" for k, v in changes.items()] if estimate(job).total <= limit else None


def verdict(job: Job, size_gb: float) -> str:
    """One line: whether the job fits a GPU of `size_gb` GB, and what to change to fit it (or a batch twice as big)."""
    limit = size_gb * GIB
    total = estimate(job).total
    batch, length = job.train.per_device_batch_size, job.max_length
    if total <= limit:
        line = f"fits on {size_gb:g} GB ({gib(total)}) with batch {batch} × {length} tokens"
        bigger = job.but(train={"per_device_batch_size": 2 * batch})
        if estimate(bigger).total <= limit:
            return line + f"; batch {2 * batch} fits too"
        changes = fit(bigger, limit)
        return line + f"; to fit batch {2 * batch}: " + (" ".join(changes) if changes else "no change tried fits")
    changes = fit(job, limit)
    if changes is None:
        return (
            f"does not fit on {size_gb:g} GB ({gib(total)}); nothing tried fits: more GPUs with ZeRO-3, "
            "a shorter data.max_length or a smaller model"
        )
    return f"does not fit on {size_gb:g} GB ({gib(total)}); to fit: {' '.join(changes)}"


def print_report(est: Estimate, steps: StepPlan | None, sizes: tuple[float, ...], console) -> None:
    """The memory table, the step count and one verdict per GPU size."""
    from rich.table import Table

    job = est.job
    title = (
        f"{job.model.name_or_path}: {job.method.type}, {job.world_size} process(es) on "
        f"{'GPU' if job.device == 'cuda' else 'CPU'}, sharding {job.sharding}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("per device", justify="right")
    table.add_column("note", overflow="fold")
    for name, value in est.parts.items():
        table.add_row(name, gib(value), est.notes.get(name, ""))
    table.add_row("[bold]total[/bold]", f"[bold]{gib(est.total)}[/bold]", "")
    if est.offloaded:
        table.add_row("CPU memory (offload)", gib(est.offloaded), "per process, outside the GPU")
    console.print(table)
    if steps is not None:
        console.print(f"steps: {steps.describe()}")
    for size in sizes:
        console.print(f"{size:g} GB: {verdict(job, size)}")


def job_config(config: Path | None, overrides: list[str], flags: dict[str, Any]) -> Config:
    """The Config to estimate: a YAML file with overrides, or one described by `flags` alone (model, method, …).

    `flags` maps config keys (e.g. "method.type") to values; None values are left to the file or the defaults.
    """
    from tuneforge.config import apply_overrides, read_yaml, validate

    given = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if config is not None:
        return validate(apply_overrides(read_yaml(config), [*given, *overrides]), str(config))
    if flags.get("model.name_or_path") is None:
        raise UserError("estimate: pass a CONFIG file, or describe the job with --model ID_OR_DIR (and --method, …)")
    # Only model, method, train and distributed size memory; data and output are placeholders the estimate never reads.
    raw: dict[str, Any] = {"data": {"datasets": [{"path": "(none)"}]}, "output": {"dir": "(none)"}}
    return validate(apply_overrides(raw, [*given, *overrides]), "estimate flags")


def gpu_verdict(cfg: Config, size_gb: float) -> str:
    """One verdict line for `cfg` on a GPU of `size_gb` GB, from config.json alone (no data prepared: instant)."""
    return verdict(Job.from_config(cfg, load_shape(cfg.model)), size_gb)


def config_report(cfg: Config, console, cpu: bool = False, sizes: tuple[float, ...] = GPU_SIZES) -> None:
    """What `tuneforge estimate CONFIG` prints: the data prepared for the exact step count, the memory table, the
    verdicts for `sizes` (none on CPU)."""
    plan = plan_steps(cfg, console.print)
    job = Job.from_config(cfg, load_shape(cfg.model), "cpu" if cpu else "cuda", plan.longest, plan.tokens)
    print_report(estimate(job), plan, () if cpu else sizes, console)
