"""`tuneforge merge` and `tuneforge export [gguf|ollama]`: a run merged, converted to GGUF, given to Ollama."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import choice, user_errors
from tuneforge.errors import UserError
from tuneforge.export import MERGE_DTYPES, ONTO
from tuneforge.export.gguf_types import GGUF_TYPES, RUN_TYPE

_GGUF_TYPE_HELP = "GGUF type (k-quants need tuneforge\\[llamacpp])."
_FORCE_HELP = "Replace existing outputs."
_ONTO_HELP = (
    "QLoRA adapters: merge onto the 16bit base (default) or the dequantized 4-bit weights it trained on "
    "(the default for a pre-quantized base); both are measured and reported."
)


@user_errors
def merge(
    run: Annotated[Path | None, typer.Option(help="A LoRA run folder (its base and adapter).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model folder or hub id (with --adapter).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to merge into --model.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (with --run, default RUN/merged).")] = None,
    dtype: Annotated[choice(MERGE_DTYPES), typer.Option(help="Weights of the merged model.")] = "bf16",
    onto: Annotated[choice(ONTO) | None, typer.Option(help=_ONTO_HELP)] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Merge a LoRA adapter into its base: a plain Hugging Face model for vLLM, GGUF export, anything."""
    from tuneforge.config import ModelConfig
    from tuneforge.export.merge import merge_adapter
    from tuneforge.export.pipeline import merge_run
    from tuneforge.rundir import Run

    if run is not None and (model or adapter):
        raise UserError("merge: pass either --run RUN_DIR or --model BASE --adapter DIR, not both")
    if run is not None:
        report = merge_run(Run.open(run), out, dtype=dtype, onto=onto, force=force)
        if report is None:  # RUN/merged is this very merge of the adapter as it is now
            raise UserError(
                f"{run / 'merged'} already exists; pass --force to replace it (it is up to date: made from the "
                "adapter as it is now, with these --dtype and --onto)"
            )
    elif model is None or adapter is None or out is None:
        raise UserError("merge: pass --run RUN_DIR, or --model BASE --adapter DIR --out DIR")
    else:
        report = merge_adapter(ModelConfig(name_or_path=model), adapter, out, dtype=dtype, force=force, onto=onto)
    typer.echo(report.summary())


@user_errors
def export(
    ctx: typer.Context,
    run: Annotated[Path | None, typer.Option(help="A finished run folder: merge, GGUF, Modelfile in one go.")] = None,
    to: Annotated[str, typer.Option(help="Comma-separated: gguf, ollama (ollama implies gguf).")] = "gguf,ollama",
    type_: Annotated[choice(GGUF_TYPES), typer.Option("--type", help=_GGUF_TYPE_HELP)] = RUN_TYPE,
    onto: Annotated[choice(ONTO) | None, typer.Option(help=_ONTO_HELP)] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Export a run in one go (--run), or one step with a sub-command (gguf, ollama)."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        raise UserError("export: pass --run RUN_DIR, or use `tuneforge export gguf` / `tuneforge export ollama`")
    from tuneforge.export.pipeline import export_run

    targets = [t.strip() for t in to.split(",") if t.strip()]
    result = export_run(run, targets, type_, force=force, onto=onto, log=typer.echo)
    typer.echo(result.merge.summary() if result.merge else f"using the model in {result.model}")
    typer.echo(f"wrote {result.gguf}")
    if result.ollama_create:
        typer.echo(f"create the Ollama model with:\n  {result.ollama_create}")


@user_errors
def export_gguf_command(
    model: Annotated[Path, typer.Option(help="Hugging Face model folder (merged, or a full fine-tune).")],
    out: Annotated[Path, typer.Option(help="Output .gguf file.")],
    type_: Annotated[choice(GGUF_TYPES), typer.Option("--type", help=_GGUF_TYPE_HELP)] = "f16",
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Convert a Hugging Face Qwen3 / Qwen2 / Llama folder into one GGUF file."""
    from tuneforge.export.gguf import export_gguf

    path = export_gguf(model, out, type_, force=force)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@user_errors
def export_ollama_command(
    gguf: Annotated[Path, typer.Option(help="The .gguf file (Qwen3, QwQ or DeepSeek-R1 chat template).")],
    out: Annotated[Path, typer.Option(help="Folder for the Modelfile.")],
    sampling: Annotated[
        str, typer.Option(help="The model card's sampling: thinking | non-thinking (Qwen3).")
    ] = "thinking",
    parameter: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE: a Modelfile PARAMETER, e.g. num_ctx=8192 (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Write an Ollama Modelfile: FROM the GGUF, its family's chat template, stop tokens, sampling."""
    from tuneforge.export.ollama import export_ollama, parse_parameters

    command = export_ollama(gguf, out, sampling=sampling, force=force, parameters=parse_parameters(parameter or []))
    typer.echo(f"wrote {out / 'Modelfile'}; create the Ollama model with:\n  {command}")


def register(app: typer.Typer) -> None:
    """Add merge and the `export` group to the CLI."""
    app.command()(merge)
    group = typer.Typer(help="Export a model: GGUF for llama.cpp / LM Studio, a Modelfile for Ollama.")
    group.callback(invoke_without_command=True)(export)
    group.command("gguf")(export_gguf_command)
    group.command("ollama")(export_ollama_command)
    app.add_typer(group, name="export")
