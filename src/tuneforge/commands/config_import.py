"""`tuneforge config import`: another tool's config or command line → a tuneforge config and a report beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import choice, user_errors
from tuneforge.importers import TOOLS


@user_errors
def config_import(
    file: Annotated[
        Path, typer.Argument(help="LLaMA-Factory YAML, or a script with llamafactory-cli / swift sft / swift rlhf.")
    ],
    dataset_info: Annotated[
        Path | None, typer.Option(help="LLaMA-Factory's dataset_info.json (default: dataset_dir/dataset_info.json).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the tuneforge config.")] = Path("tuneforge.yaml"),
    source: Annotated[
        choice(TOOLS) | None, typer.Option("--from", help="The tool the file is for (default: told by the file).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key.sub=value applied to the written config (repeatable).")
    ] = None,
    check_data: Annotated[bool, typer.Option(help="Load and render every dataset and report kept/dropped.")] = True,
) -> None:
    """Write a tuneforge config equivalent to a LLaMA-Factory config or an ms-swift command line, and a report."""
    from tuneforge.importers.convert import import_config, write_import

    raw, cfg, report = import_config(file, source, dataset_info, overrides)
    if check_data:
        from tuneforge.importers.data_check import check_datasets

        check_datasets(cfg, report)
    md, _ = write_import(raw, report, out)
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    report.print_table(console)
    console.print(f"wrote {out} and its report {md}; check it with: tuneforge config check {out}")


@user_errors
def config_export(
    config: Annotated[Path, typer.Argument(help="tuneforge YAML config.")],
    to: Annotated[str, typer.Option(help="The tool to write a config for: llamafactory.")] = "llamafactory",
    out: Annotated[Path, typer.Option(help="Where to write it (dataset_info.json goes beside it).")] = Path(
        "llamafactory.yaml"
    ),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key.sub=value applied first (repeatable).")
    ] = None,
) -> None:
    """Write an equivalent LLaMA-Factory training YAML (and its dataset_info.json), with a report of every key."""
    from tuneforge.importers.convert import export_config

    md = export_config(config, to, out, overrides)
    typer.echo(f"wrote {out}, {out.parent / 'dataset_info.json'} and the report {md}")


def register(group: typer.Typer) -> None:
    """Add import and export to the `config` group."""
    group.command("import")(config_import)
    group.command("export")(config_export)
