"""The `tuneforge` command: a table of thin commands, each parsing flags and calling one library function.

Heavy imports (torch, transformers) happen inside the commands so that `tuneforge --help` starts fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tuneforge.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune Qwen3-family models from one YAML config.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate config files.")
data_app = typer.Typer(no_args_is_help=True, help="See exactly what the model will be trained on.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserError as one line (no traceback) and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Fine-tune a model as the config says; everything lands in output.dir."""
    from tuneforge.config import load_config
    from tuneforge.train.run import train as run_training

    cfg = load_config(config, overrides)
    run_training(cfg, log=_console().print)


@config_app.command("check")
@user_errors
def config_check(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Validate a config without running anything."""
    from tuneforge.config import load_config

    cfg = load_config(config, overrides)
    typer.echo(f"{config}: ok ({cfg.method.type} on {cfg.model.name_or_path}, {len(cfg.data.datasets)} dataset(s))")


def _prepared(config: Path, overrides: list[str] | None, split: str):
    from tuneforge.config import load_config
    from tuneforge.data.prepare import prepare
    from tuneforge.model.load import load_tokenizer

    cfg = load_config(config, overrides)
    tokenizer = load_tokenizer(cfg.model)
    data = prepare(cfg.data, tokenizer, log=_console().print)
    dataset = data.train if split == "train" else data.validation
    if dataset is None:
        raise UserError("data.val_size: the validation split is empty; set data.val_size to make one")
    return dataset, tokenizer


@data_app.command("render")
@user_errors
def data_render(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    limit: Annotated[Optional[int], typer.Option(help="Write at most N samples.")] = None,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Write exactly what the trainer receives: one {"input_ids", "labels"} object per line."""
    import json

    from tuneforge.io import atomic_write_text

    dataset, _ = _prepared(config, overrides, split)
    rows = dataset.select(range(min(limit or len(dataset), len(dataset))))
    lines = (json.dumps({"input_ids": r["input_ids"], "labels": r["labels"]}) for r in rows)
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    typer.echo(f"wrote {len(rows)} samples to {out}")


@data_app.command("preview")
@user_errors
def data_preview(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    count: Annotated[int, typer.Option("--count", "-n", help="Samples to show.")] = 3,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Show samples with the trained tokens highlighted, and a token-length summary."""
    from tuneforge.data.preview import preview

    dataset, tokenizer = _prepared(config, overrides, split)
    preview(dataset, tokenizer, count, _console())


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
