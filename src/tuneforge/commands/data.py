"""`tuneforge data render|preview`: exactly what the trainer receives, as a file or highlighted in the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import choice, err_console, user_errors
from tuneforge.constants import SPLITS
from tuneforge.errors import UserError


def _prepared(config: Path, overrides: list[str] | None, split: str):
    from tuneforge.config import load_config
    from tuneforge.data.prepare import prepare
    from tuneforge.model.load import load_tokenizer
    from tuneforge.objective import Objective

    cfg = load_config(config, overrides)
    tokenizer = load_tokenizer(cfg.model)
    objective = Objective.of(cfg.method)
    data = prepare(cfg.data, tokenizer, log=err_console().print, objective=objective)
    dataset = data.train if split == "train" else data.validation
    if dataset is None:
        raise UserError("data.val_size: the validation split is empty; set data.val_size to make one")
    return dataset, tokenizer, objective


@user_errors
def data_render(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    limit: Annotated[int | None, typer.Option(help="Write at most N samples.")] = None,
    split: Annotated[choice(SPLITS), typer.Option(help="The split to write.")] = "train",
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Write exactly what the trainer receives: one {"input_ids", "labels"} object per line (per answer for preference
    data: {"chosen": {...}, "rejected": {...}}, or KTO's {"label", "input_ids", "labels"})."""
    import json

    from tuneforge.data.preview import rendered_record
    from tuneforge.io import atomic_write_text, check_writable

    check_writable(out, "--out", folder=False)
    dataset, _, objective = _prepared(config, overrides, split)
    rows = dataset.select(range(min(limit or len(dataset), len(dataset))))
    lines = (json.dumps(rendered_record(r, objective)) for r in rows)
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    typer.echo(f"wrote {len(rows)} samples to {out}")


@user_errors
def data_preview(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    count: Annotated[int, typer.Option("--count", "-n", help="Samples to show.")] = 3,
    split: Annotated[choice(SPLITS), typer.Option(help="The split to show.")] = "train",
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Show samples with the trained tokens highlighted (both answers of a pair), and a token-length summary."""
    from tuneforge.data.preview import preview

    dataset, tokenizer, objective = _prepared(config, overrides, split)
    preview(dataset, tokenizer, count, err_console(), objective)


def register(app: typer.Typer) -> None:
    """Add the `data` group to the CLI."""
    group = typer.Typer(no_args_is_help=True, help="See exactly what the model will be trained on.")
    group.command("render")(data_render)
    group.command("preview")(data_preview)
    app.add_typer(group, name="data")
