"""`tuneforge synth`: documents → training data, eval split and report through any OpenAI-compatible model."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import user_errors

# The import names of the [synth] extra's packages (pyproject.toml), checked before a run starts.
SYNTH_MODULES = ("pypdf", "docx", "pptx", "openpyxl", "markdownify", "bs4", "datasketch", "openai", "aiohttp")


@user_errors
def synth_command(
    config: Annotated[
        Path | None, typer.Argument(help="Synth YAML (docs/synth.md); flags and KEY=VALUE override it.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. chunk.tokens=256.")
    ] = None,
    docs: Annotated[str | None, typer.Option(help="Document file or folder (recursive).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible server, e.g. http://localhost:8000.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name on that server.")] = None,
    model_dir: Annotated[
        str | None,
        typer.Option(help="Instead of --endpoint: a local model folder or training run, run in this process."),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    shard: Annotated[str, typer.Option(help="I/N: this machine's share of the documents (journals merge).")] = "0/1",
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (else model.api_key_env, TUNEFORGE_API_KEY, OPENAI_API_KEY)."),
    ] = None,
) -> None:
    """Build SFT data (with reasoning), a held-out eval suite and a report from documents."""
    from tuneforge.errors import UserError
    from tuneforge.infer.remote import client_api_key
    from tuneforge.synth.config import load_synth_config
    from tuneforge.synth.output import train_snippet
    from tuneforge.synth.run import parse_shard, synth

    missing = [name for name in SYNTH_MODULES if importlib.util.find_spec(name) is None]
    if missing:  # one line here, rather than a traceback once the first document or request needs it
        raise UserError(f"synth needs {', '.join(missing)}: pip install 'tuneforge[synth]'")
    if config is not None and "=" in str(config) and not config.exists():
        overrides, config = [str(config), *(overrides or [])], None  # only overrides were given
    flags = {
        "docs": docs,
        "out": out,
        "model.endpoint": endpoint,
        "model.name": model,
        "model.path": model_dir,
        "model.concurrency": concurrency,
    }
    cfg = load_synth_config(config, [*(overrides or []), *(f"{k}={v}" for k, v in flags.items() if v is not None)])
    if api_key_file is not None and cfg.model.api_key_file is not None:
        raise UserError("give the API key file once: --api-key-file or model.api_key_file, not both")
    key_file = api_key_file or (Path(cfg.model.api_key_file).expanduser() if cfg.model.api_key_file else None)
    key = client_api_key(key_file, cfg.model.api_key_env)
    if cfg.model.path is None:
        report = synth(cfg, key, parse_shard(shard), log=typer.echo)
    else:
        with _in_process(cfg.model.path) as (url, name):
            report = synth(cfg.served_at(url, name), key, parse_shard(shard), log=typer.echo)
    written, failed, filtered = report["written"], report["failed"], report["filtered"]
    typer.echo(
        f"requested {report['requested']} pairs: written {written['total']} (train {written['train']}, eval "
        f"{written['eval']}), failed {failed['total']}, filtered {filtered['total']}; requests sent "
        f"{report['requests']['sent']}, from the journal {report['requests']['from_journal']}; tokens in "
        f"{report['tokens']['in']}, out {report['tokens']['out']}"
    )
    for what in (failed, filtered):
        for reason, count in what["by_reason"].items():
            typer.echo(f"  {count:6d}  {reason}")
    for problem in report["documents"]["without_text"]:
        typer.echo(f"  skipped {problem['file']}: {problem['problem']}")
    pairs = report["preference"]
    if pairs is not None:
        typer.echo(
            f"preference pairs: requested {pairs['requested']}, written {pairs['written']}, failed "
            f"{pairs['failed']['total']}, filtered {pairs['filtered']['total']}"
        )
        for what in (pairs["failed"], pairs["filtered"]):
            for reason, count in what["by_reason"].items():
                typer.echo(f"  {count:6d}  {reason}")
    if parse_shard(shard)[1] == 1:
        typer.echo(f"train on it with this data section:\n{train_snippet(Path(cfg.out), cfg.output.format)}")
        if pairs is not None:
            typer.echo(f"or DPO on the preference pairs:\n{train_snippet(Path(cfg.out), '', preference=True)}")
    if report["failure_rate"] > cfg.budget.max_failure_rate:
        typer.secho(
            f"error: {report['failure_rate']:.1%} of the pairs failed (budget.max_failure_rate "
            f"{cfg.budget.max_failure_rate:.1%}); see {cfg.out}/report.json; run again to retry what a server "
            "error stopped (received replies are not asked again)",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)


@contextmanager
def _in_process(path: str) -> Iterator[tuple[str, str]]:
    """model.path served by the built-in engine on a free loopback port for the run: synth's requests keep one path
    (client, journal, retries, accounting) whether the model is local or remote. Yields the URL and served name."""
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.rundir import Run
    from tuneforge.serve.app import create_app, serve_in_background

    spec = resolve_spec(run=path) if Run(Path(path)).config_file.is_file() else resolve_spec(model=path)
    engine = load_engine(spec)
    try:
        with serve_in_background(create_app(engine, thinking=spec.thinking)) as url:
            yield url, engine.names[-1]
    finally:
        engine.close()


def register(app: typer.Typer) -> None:
    """Add synth to the CLI."""
    app.command("synth")(synth_command)
