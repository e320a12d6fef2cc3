"""`tuneforge export --run RUN`: merge (LoRA runs), then GGUF, then an Ollama Modelfile, all inside the run folder.

    RUN/merged/                      merged Hugging Face model (LoRA runs; a full fine-tune uses RUN/model)
    RUN/gguf/{run}-{type}.gguf       the GGUF
    RUN/ollama/{run}-{type}/Modelfile  FROM ../../gguf/{run}-{type}.gguf
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.export import refuse_existing
from tuneforge.export.merge import MergeReport, merge_adapter, run_sources
from tuneforge.rundir import RunDir

TARGETS = ("gguf", "ollama")


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` used and wrote."""

    model: Path  # the Hugging Face folder the GGUF was made from
    merge: MergeReport | None  # set when this call merged the adapter
    gguf: Path
    ollama_create: str | None  # the command to run, when a Modelfile was written


def export_run(run: Path, to: list[str], qtype: str, force: bool = False, onto: str | None = None) -> ExportResult:
    """Export a finished run to the `to` targets (gguf, ollama) with GGUF type `qtype`; `onto` as in merge."""
    from tuneforge.export.gguf import GGUF_TYPES, export_gguf
    from tuneforge.export.ollama import export_ollama

    unknown = sorted(set(to) - set(TARGETS))
    if unknown or not to:
        raise UserError(f"--to {','.join(to)}: expected a comma-separated list of {', '.join(TARGETS)}")
    if qtype not in GGUF_TYPES:
        raise UserError(f"--type {qtype}: expected one of {', '.join(GGUF_TYPES)}")
    rundir = RunDir(run)
    rundir.load_config()  # fails early, in one line, when `run` is not a run folder
    stem = f"{run.resolve().name}-{qtype}"
    gguf_file = run / "gguf" / f"{stem}.gguf"
    ollama_dir = run / "ollama" / stem
    # Check every output before the slow steps, so a refusal never comes after minutes of merging.
    refuse_existing(gguf_file, force)
    if "ollama" in to:
        refuse_existing(ollama_dir / "Modelfile", force)

    report = None
    model = rundir.model if rundir.model.is_dir() else run / "merged"
    if model != rundir.model and (force or not model.is_dir()):
        base, adapter = run_sources(run)
        # An f32 GGUF asks for full precision; otherwise bf16, Qwen3's own dtype, loses nothing the GGUF keeps.
        report = merge_adapter(base, adapter, model, dtype="fp32" if qtype == "f32" else "bf16", force=True,
                              onto=onto)
    export_gguf(model, gguf_file, qtype, force)
    command = export_ollama(gguf_file, ollama_dir, force=force) if "ollama" in to else None
    return ExportResult(model=model, merge=report, gguf=gguf_file, ollama_create=command)
