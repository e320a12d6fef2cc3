"""`tuneforge bundle` (build an offline bundle) and `tuneforge bundle verify DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import user_errors


@user_errors
def bundle(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="New folder to write the bundle into.")] = None,
    python: Annotated[str | None, typer.Option(help="Target CPython, e.g. 3.11 (default: this one).")] = None,
    platform: Annotated[
        str | None, typer.Option(help="Target platform tag, e.g. manylinux_2_28_x86_64 (default: this machine's).")
    ] = None,
    torch: Annotated[str, typer.Option(help="torch build: cpu, cu126, cu128, ... or pypi (PyPI's own).")] = "cpu",
    torch_index: Annotated[
        str | None, typer.Option(help="Where torch builds are found: an index URL or a folder of wheels.")
    ] = None,
    extras: Annotated[str, typer.Option(help="tuneforge extras, comma-separated: serve,webui,qlora,eval,...")] = "",
    model: Annotated[list[str] | None, typer.Option(help="Model folder or cached hub id (repeat).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="Data file, folder or cached hub id (repeat).")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Folder of evaluation data (eval --data-dir).")] = None,
    config: Annotated[list[Path] | None, typer.Option(help="Config file to carry (repeat).")] = None,
) -> None:
    """Wheels, models, datasets and install.sh for a machine without network, in one folder."""
    if ctx.invoked_subcommand is not None:
        return
    from tuneforge.bundle.build import build_bundle
    from tuneforge.bundle.wheels import Target, this_machine
    from tuneforge.errors import UserError

    if out is None:
        raise UserError("tuneforge bundle: --out DIR is required (or `tuneforge bundle verify DIR`)")
    here = this_machine()
    target = Target(python or here.python, platform or here.platform, torch, torch_index)
    files = [(path, "eval") for path in [eval_data] if path] + [(path, "configs") for path in config or []]
    names = [name.strip() for name in extras.split(",") if name.strip()]
    manifest = build_bundle(out, target, names, model or [], dataset or [], files, log=typer.echo)
    size = sum(entry["size"] for entry in manifest["files"].values())
    count = len(manifest["files"])
    typer.echo(f"wrote {out}: {count} files, {size / 2**20:.0f} MiB; on the target: sh {out}/install.sh")


@user_errors
def verify(bundle_dir: Annotated[Path, typer.Argument(help="A folder made by `tuneforge bundle`.")]) -> None:
    """Check every file's sha256 and size, and that all requirements install from the bundle alone."""
    from tuneforge.bundle.verify import verify_bundle

    problems, count = verify_bundle(bundle_dir)
    for problem in problems:
        typer.secho(f"problem: {problem}", fg="red", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{bundle_dir}: every file matches the manifest; {count} wheels install from the bundle alone")


def register(app: typer.Typer) -> None:
    """Add the `bundle` group to the CLI."""
    group = typer.Typer(help="Offline bundles: build one, verify one.")
    group.callback(invoke_without_command=True)(bundle)
    group.command("verify")(verify)
    app.add_typer(group, name="bundle")
