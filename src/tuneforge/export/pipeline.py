"""`tuneforge export --run RUN` and `merge --run RUN`: merge (LoRA runs), GGUF, Ollama Modelfile, inside the run.

    RUN/merged/                        merged Hugging Face model (LoRA runs; a full fine-tune uses RUN/model)
    RUN/gguf/{run}-{type}.gguf         the GGUF
    RUN/ollama/{run}-{type}/Modelfile  FROM ../../gguf/{run}-{type}.gguf

Each output is recorded in run.json with what it was made from (the adapter's fingerprint and --onto/--dtype for
merged/, the model's fingerprint and --type for a GGUF, the GGUF's for a Modelfile). An output whose source no
longer matches is rebuilt, saying why; one that matches is kept. Every requirement of every step is checked
before the first slow one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError, problems_of
from tuneforge.export import refuse_existing
from tuneforge.export.merge import MergeReport, default_onto, merge_adapter, run_sources
from tuneforge.rundir import Run, fingerprint

TARGETS = ("gguf", "ollama")


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` used and wrote."""

    model: Path  # the Hugging Face folder the GGUF was made from
    merge: MergeReport | None  # set when this call merged the adapter
    gguf: Path
    ollama_create: str | None  # the command to run, when a Modelfile was written


def merge_run(
    run: Run, out: Path | None = None, dtype: str = "bf16", onto: str | None = None, force: bool = False,
    log: Callable[..., None] = print,
) -> MergeReport | None:  # fmt: skip
    """Merge a LoRA run's adapter into RUN/merged (or `out`); None when RUN/merged is already that merge."""
    base, adapter = run_sources(run)
    method = run.cfg.method
    if out is not None and out.resolve() != run.merged.resolve():
        return merge_adapter(base, adapter, out, dtype=dtype, force=force, onto=onto, log=log, method=method)
    made_from = _merge_source(run, dtype, onto)
    reason = run.stale_reason("merged", run.merged, made_from)
    if reason is None and not force:
        return None
    if reason not in (None, "missing"):
        log(f"rebuilding {run.merged}: {reason}")
    report = merge_adapter(base, adapter, run.merged, dtype=dtype, force=True, onto=onto, log=log, method=method)
    run.record("merged", run.merged, made_from)
    return report


def export_run(
    run: Path, to: list[str], qtype: str, force: bool = False, onto: str | None = None,
    log: Callable[..., None] = print,
) -> ExportResult:  # fmt: skip
    """Export a finished run to the `to` targets (gguf, ollama) with GGUF type `qtype`; `onto` as in merge."""
    from tuneforge.export.gguf import check_gguf_type, export_gguf
    from tuneforge.export.ollama import export_ollama

    unknown = sorted(set(to) - set(TARGETS))
    if unknown or not to:
        raise UserError(f"--to {','.join(to)}: expected a comma-separated list of {', '.join(TARGETS)}")
    rundir = Run.open(run)
    check_gguf_type(qtype)
    full = rundir.model.is_dir() and not rundir.adapter.is_dir()
    if not full:
        run_sources(rundir)  # one line when there is no adapter
    # An f32 GGUF asks for full precision; otherwise bf16, Qwen3's own dtype, loses nothing the GGUF keeps.
    dtype = "fp32" if qtype == "f32" else "bf16"
    model = rundir.model if full else rundir.merged
    gguf_file, ollama_dir = rundir.gguf(qtype), rundir.ollama(qtype)

    # Decide what to (re)build and check everything it needs before the first slow step.
    merge_needed = not full and (force or rundir.stale_reason("merged", model, _merge_source(rundir, dtype, onto)))
    gguf_reason = (
        None if merge_needed else rundir.stale_reason(_key(rundir, gguf_file), gguf_file, _gguf_source(model, qtype))
    )
    gguf_needed = bool(force or merge_needed or gguf_reason)
    ollama_needed = "ollama" in to and (gguf_needed or rundir.stale_reason(
        _key(rundir, ollama_dir), ollama_dir, {"gguf": fingerprint(gguf_file)}) is not None)  # fmt: skip
    if not gguf_needed and not ollama_needed:
        raise UserError(
            f"{gguf_file} already exists; pass --force to replace it (it is up to date: made from "
            f"{model.name}/ as it is now, with --type {qtype})"
        )
    check_requirements(rundir, full, qtype, "ollama" in to, merge_needed, gguf_needed)
    if gguf_needed:
        refuse_existing(gguf_file, force=True)  # clears what a killed export left; checks the folder is writable
    if gguf_reason not in (None, "missing"):
        log(f"rebuilding {gguf_file}: {gguf_reason}")

    report = merge_run(rundir, dtype=dtype, onto=onto, force=bool(force), log=log) if merge_needed else None
    if gguf_needed:
        export_gguf(model, gguf_file, qtype, force=True)
        rundir.record(_key(rundir, gguf_file), gguf_file, _gguf_source(model, qtype))
    command = None
    if "ollama" in to:
        command = export_ollama(gguf_file, ollama_dir, force=True)
        rundir.record(_key(rundir, ollama_dir), ollama_dir, {"gguf": fingerprint(gguf_file)})
    return ExportResult(model=model, merge=report, gguf=gguf_file, ollama_create=command)


def check_requirements(run: Run, full: bool, qtype: str, ollama: bool, merge: bool, gguf: bool) -> None:
    """Every requirement of the steps about to run, all problems at once: architecture, template, disk space."""
    from tuneforge.export.gguf import check_architecture, gguf_bytes
    from tuneforge.export.ollama import template_family

    source = run.model if full else run.base_dir()  # None: a hub base not downloaded yet (merge fetches it)
    checks: list[Callable[[], Any]] = []
    if source is not None:
        checks.append(lambda: check_architecture(source))
    if ollama:
        checks.append(lambda: template_family(run.chat_template(), f"--to ollama: the run's ({run.root})"))
    problems = problems_of(checks)
    if not problems and source is not None:
        needed = (gguf_bytes(source, "f32" if qtype == "f32" else "bf16") if merge else 0) + (
            gguf_bytes(source, qtype) if gguf else 0
        )
        free = shutil.disk_usage(run.root).free
        if needed > free:
            problems.append(
                f"{run.root}: the export needs about {needed / 2**30:.1f} GiB and the disk has "
                f"{free / 2**30:.1f} GiB free; free some space, or export a smaller --type"
            )
    if problems:
        raise UserError("\n".join(problems))


def _merge_source(run: Run, dtype: str, onto: str | None) -> dict[str, Any]:
    """What RUN/merged is made from: the adapter as it is now, and the merge options (`onto` as the merge resolves
    it, so that an explicit --onto equal to the default reuses a default merge)."""
    try:
        onto = onto or default_onto(run.base_model_config())
    except OSError:
        onto = None  # the base cannot be read here: no recorded merge matches, and the merge says why it fails
    return {"adapter": fingerprint(run.adapter), "dtype": dtype, "onto": onto}


def _gguf_source(model: Path, qtype: str) -> dict[str, Any]:
    return {"model": fingerprint(model) if model.exists() else None, "type": qtype}


def _key(run: Run, path: Path) -> str:
    """An artifact's name in run.json: its path inside the run."""
    return path.relative_to(run.root).as_posix()
