"""`tuneforge download MODEL_OR_DATASET`: fetch weights or data ahead of time (registered in tuneforge.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def download_command(
    repo_id: Annotated[str, typer.Argument(help="Hub id, e.g. Qwen/Qwen3-0.6B or llamafactory/alpaca_en.")],
    kind: Annotated[str, typer.Option(help="model, dataset, or auto (a model, else a dataset).")] = "auto",
    hub: Annotated[str, typer.Option(help="huggingface (HF_ENDPOINT honoured) or modelscope.")] = "huggingface",
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Hub cache folder (default: the hub's own).")] = None,
    local_dir: Annotated[
        Path | None, typer.Option(help="Write the files into this folder instead of the cache.")
    ] = None,
) -> None:
    """Download a model or dataset (resuming a partial download), so later runs need no network."""
    from tuneforge.download import config_hint, download
    from tuneforge.errors import UserError

    if kind not in ("auto", "model", "dataset") or hub not in ("huggingface", "modelscope"):
        raise UserError("--kind: expected auto, model or dataset; --hub: expected huggingface or modelscope")
    found, folder = download(repo_id, kind, hub, revision, cache_dir, local_dir)  # type: ignore[arg-type]
    typer.echo(f"{repo_id}: {found} downloaded to {folder}")
    typer.echo(f"use it with: {config_hint(repo_id, found, hub, folder, local_dir)}")
