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


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
