"""`tuneforge config check|show|import|export`: validate, list and convert config files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands import config_import
from tuneforge.commands.common import user_errors


@user_errors
def config_check(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Validate a config without running anything."""
    from tuneforge.config import check_local_files, load_config

    cfg = load_config(config, overrides)
    check_local_files(cfg)
    typer.echo(f"{config}: ok ({cfg.method.type} on {cfg.model.name_or_path}, {len(cfg.data.datasets)} dataset(s))")


@user_errors
def config_show(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (default: show the defaults).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
    markdown: Annotated[bool, typer.Option(help="Markdown tables, as in docs/config.md.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of printing.")] = None,
) -> None:
    """Every config key with its default (or CONFIG's value), allowed values and a one-line description."""
    from tuneforge.config import load_config
    from tuneforge.config_reference import reference
    from tuneforge.io import atomic_write_text

    text = reference(load_config(config, overrides) if config else None, markdown=markdown)
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the `config` group to the CLI."""
    group = typer.Typer(no_args_is_help=True, help="Inspect and validate config files.")
    group.command("check")(config_check)
    group.command("show")(config_show)
    config_import.register(group)
    app.add_typer(group, name="config")
