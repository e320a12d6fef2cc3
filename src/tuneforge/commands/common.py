"""What every command module shares: one-line user errors, the stderr console, options used by several commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import typer

from tuneforge.errors import UserError

# chat, eval, serve: the base loads as the run trained it unless told otherwise.
QUANTIZE_OPTION = typer.Option(
    "--load-in-4bit/--no-quantize",
    help="Load the base in 4 bit (bitsandbytes), or in 16 bit \\[default: a QLoRA run's base as it was trained].",
)


# chat, eval, serve: a base too large for one GPU, spread over all of them (choices owned by model/load.py).
DEVICE_MAP_OPTION = typer.Option(
    "--device-map",
    help="Spread the model over every GPU: auto, balanced or sequential (GPU only; on a CPU all stays on the CPU).",
)
MAX_MEMORY_OPTION = typer.Option(
    help="With --device-map: the most each device may hold, e.g. 0=20GiB,1=24GiB,cpu=64GiB.",
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserError as one line per problem (no traceback) and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in str(exc).splitlines():  # several problems reported at once: one `error:` line each
                typer.secho(f"error: {line}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def err_console():
    """A rich console on stderr (progress and notes; stdout stays for results)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def choice(values: tuple[str, ...]) -> Any:
    """An option type accepting exactly `values` (its owner's constant): typer validates and lists them in --help."""
    return Literal[values]  # type: ignore[valid-type]
