"""The `tuneforge` command: a table of command groups, each in tuneforge/commands/, each parsing flags and calling
library functions.

Heavy imports (torch, transformers) happen inside the commands so that `tuneforge --help` starts fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tuneforge.commands import bundle, config, data, download, export, serving, synth, train

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune Qwen3-family models from one YAML config."
)


def _print_version(value: bool) -> None:
    if value:
        from tuneforge import __version__

        typer.echo(f"tuneforge {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show third-party libraries' warnings and banners (hidden by default).")
    ] = False,
) -> None:
    """Fine-tune Qwen3-family models from one YAML config."""
    from tuneforge.quiet import configure

    configure(verbose)


# Each module adds its commands and groups, wrapped in commands.common.user_errors; the order is `--help`'s.
for module in (train, serving, export, download, synth, config, data, bundle):
    module.register(app)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
