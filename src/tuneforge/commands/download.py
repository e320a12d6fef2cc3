"""`tuneforge download MODEL_OR_DATASET`: fetch weights or data ahead of time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from tuneforge.commands.common import choice, user_errors
from tuneforge.download import Hub, Kind


@user_errors
def download_command(
    repo_id: Annotated[str, typer.Argument(help="Hub id, e.g. Qwen/Qwen3-0.6B or llamafactory/alpaca_en.")],
    kind: Annotated[choice(get_args(Kind)), typer.Option(help="auto: a model, else a dataset.")] = "auto",
    hub: Annotated[choice(get_args(Hub)), typer.Option(help="Where from (HF_ENDPOINT honoured).")] = "huggingface",
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Hub cache folder (default: the hub's own).")] = None,
    local_dir: Annotated[
        Path | None, typer.Option(help="Write the files into this folder instead of the cache.")
    ] = None,
) -> None:
    """Download a model or dataset (resuming a partial download), so later runs need no network."""
    from tuneforge.download import config_hint, download

    found, folder = download(repo_id, kind, hub, revision, cache_dir, local_dir)
    typer.echo(f"{repo_id}: {found} downloaded to {folder}")
    typer.echo(f"use it with: {config_hint(repo_id, found, hub, folder, local_dir)}")


def register(app: typer.Typer) -> None:
    """Add download to the CLI."""
    app.command("download")(download_command)
