"""The `tuneforge` command: a table of thin commands, each parsing flags and calling one library function.

Heavy imports (torch, transformers) happen inside the commands so that `tuneforge --help` starts fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.commands import bundle as bundle_commands
from tuneforge.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune Qwen3-family models from one YAML config."
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate config files.")
data_app = typer.Typer(no_args_is_help=True, help="See exactly what the model will be trained on.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

# chat, eval, serve: the base loads as the run trained it unless told otherwise.
QUANTIZE_OPTION = typer.Option(
    "--load-in-4bit/--no-quantize",
    help="Load the base in 4 bit (bitsandbytes), or in 16 bit \\[default: a QLoRA run's base as it was trained].",
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


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
    nproc: Annotated[int | None, typer.Option(help="Processes on this node, one per GPU (distributed.nproc).")] = None,
    nnodes: Annotated[int | None, typer.Option(help="Machines taking part (distributed.nnodes).")] = None,
    node_rank: Annotated[int | None, typer.Option(help="This machine's index, 0 to nnodes-1.")] = None,
    master_addr: Annotated[str | None, typer.Option(help="Address of node 0 (distributed.master_addr).")] = None,
    master_port: Annotated[int | None, typer.Option(help="Rendezvous port on node 0.")] = None,
    preflight: Annotated[
        bool, typer.Option(help="Print the memory estimate and step count; stop if it cannot fit (train.preflight).")
    ] = True,
) -> None:
    """Fine-tune a model as the config says; everything lands in output.dir. --nproc/--nnodes use torchrun."""
    from tuneforge.train.launch import train_command

    flags = {
        "nproc": nproc,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "master_addr": master_addr,
        "master_port": master_port,
    }
    overrides = [*(overrides or []), *(f"distributed.{k}={v}" for k, v in flags.items() if v is not None)]
    if not preflight:
        overrides.append("train.preflight=false")
    status = train_command(config, overrides, log=_console().print)
    if status:
        raise typer.Exit(status)


@app.command()
@user_errors
def estimate(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (or describe the job by flags).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder or hub id (model.name_or_path).")] = None,
    method: Annotated[str | None, typer.Option(help="lora | qlora | full (method.type).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest sample in tokens (data.max_length).")] = None,
    batch: Annotated[int | None, typer.Option(help="Per-device batch size (train.per_device_batch_size).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Checkpointing.")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="ddp | deepspeed | fsdp (distributed.strategy).")] = None,
    deepspeed: Annotated[str | None, typer.Option(help="zero2 | zero2_offload | zero3 | zero3_offload.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs (processes) the run uses (distributed.nproc).")] = None,
    gpu_memory: Annotated[float | None, typer.Option(help="Judge this GPU size in GB (default 24, 48, 80).")] = None,
    cpu: Annotated[bool, typer.Option(help="Estimate for training on this machine's CPU (fp32), not a GPU.")] = False,
    steps: Annotated[bool, typer.Option(help="With a CONFIG: prepare its data and count the optimizer steps.")] = True,
    serve: Annotated[
        bool, typer.Option(help="Inference memory instead: weights + KV cache for --max-length × --max-num-seqs.")
    ] = False,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="--serve: sequences generated together.")] = 1,
    gpu_memory_utilization: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="--serve: vLLM's share of the GPU.")
    ] = 0.9,
) -> None:
    """Memory per device (from config.json alone), the exact step count, and whether it fits 24 / 48 / 80 GB GPUs."""
    from tuneforge.estimate.memory import Job, load_shape
    from tuneforge.estimate.memory import estimate as estimate_memory
    from tuneforge.estimate.report import GPU_SIZES, job_config, print_report
    from tuneforge.estimate.steps import plan_steps

    flags = {
        "model.name_or_path": model,
        "method.type": method,
        "data.max_length": max_length,
        "train.per_device_batch_size": batch,
        "train.gradient_checkpointing": gradient_checkpointing,
        "distributed.strategy": strategy,
        "distributed.deepspeed": deepspeed,
        "distributed.nproc": gpus,
    }
    cfg = job_config(config, overrides or [], flags)
    console = _console()
    if serve:
        from tuneforge.estimate.serve import estimate_serve, serve_report

        job = Job.from_config(cfg, load_shape(cfg.model), "cpu" if cpu else "cuda")
        sizes = () if cpu else ((gpu_memory,) if gpu_memory else GPU_SIZES)
        for line in serve_report(estimate_serve(job, cfg.data.max_length, max_num_seqs), sizes, gpu_memory_utilization):
            typer.echo(line)
        return
    plan = plan_steps(cfg, console.print) if config is not None and steps else None
    # With the data prepared, rows are as wide as its longest sample (at most data.max_length).
    job = Job.from_config(cfg, load_shape(cfg.model), "cpu" if cpu else "cuda", plan.longest if plan else 0)
    est = estimate_memory(job)
    print_report(est, plan, () if cpu else ((gpu_memory,) if gpu_memory else GPU_SIZES), console)


@app.command()
@user_errors
def env(
    offline_check: Annotated[bool, typer.Option(help="Check that a run needs no network; exit 1 on problems.")] = False,
    model: Annotated[str | None, typer.Option(help="With --offline-check: model folder or hub id to check.")] = None,
) -> None:
    """Library versions, GPUs, and which attention / loss / quantization paths a run would take here."""
    from rich.console import Console
    from rich.table import Table

    from tuneforge.env import gpus, offline_problems, paths, versions

    console = Console(highlight=False)
    table = Table("package", "version", title="libraries", title_justify="left")
    for name, version in versions().items():
        table.add_row(name, version)
    console.print(table)
    found = gpus()
    if found:
        table = Table(*found[0], title="GPUs", title_justify="left")
        for gpu in found:
            table.add_row(*gpu.values())
        console.print(table)
    else:
        console.print("GPUs: none visible (training runs on the CPU)")
    table = Table("choice", "taken here", title="paths a run takes", title_justify="left")
    for name, value in paths().items():
        table.add_row(name, value)
    console.print(table)
    if offline_check:
        problems = offline_problems(model)
        for problem in problems:
            typer.secho(f"problem: {problem}", fg="red", err=True)
        if problems:
            raise typer.Exit(1)
        console.print("offline check: ok")


@config_app.command("check")
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


@config_app.command("show")
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


def _prepared(config: Path, overrides: list[str] | None, split: str):
    from tuneforge.config import load_config
    from tuneforge.data.prepare import prepare
    from tuneforge.model.load import load_tokenizer
    from tuneforge.objective import Objective

    cfg = load_config(config, overrides)
    tokenizer = load_tokenizer(cfg.model)
    objective = Objective.of(cfg.method)
    data = prepare(cfg.data, tokenizer, log=_console().print, objective=objective)
    dataset = data.train if split == "train" else data.validation
    if dataset is None:
        raise UserError("data.val_size: the validation split is empty; set data.val_size to make one")
    return dataset, tokenizer, objective


@data_app.command("render")
@user_errors
def data_render(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    limit: Annotated[int | None, typer.Option(help="Write at most N samples.")] = None,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
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


@data_app.command("preview")
@user_errors
def data_preview(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    count: Annotated[int, typer.Option("--count", "-n", help="Samples to show.")] = 3,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Show samples with the trained tokens highlighted (both answers of a pair), and a token-length summary."""
    from tuneforge.data.preview import preview

    dataset, tokenizer, objective = _prepared(config, overrides, split)
    preview(dataset, tokenizer, count, _console(), objective)


@app.command()
@user_errors
def chat(
    model: Annotated[str | None, typer.Option(help="Base model folder or hub id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter folder to apply to --model.")] = None,
    run: Annotated[str | None, typer.Option(help="A tuneforge run folder (its base and adapter or model).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Answer this once and exit (default: interactive).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    think: Annotated[
        bool | None, typer.Option("--think/--no-think", help="Thinking mode \\[default: the one the run trained in].")
    ] = None,
    quantize: Annotated[bool | None, QUANTIZE_OPTION] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Longest answer in tokens [default: 512, or what the context leaves after the prompt]."),
    ] = None,
    greedy: Annotated[bool, typer.Option(help="Always pick the most likely token.")] = False,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling share.")] = None,
    compare: Annotated[bool, typer.Option(help="Answer with the base and the fine-tuned model side by side.")] = False,
) -> None:
    """Chat with a base model, an adapter on it, or a run's result; --compare shows base vs fine-tuned."""
    from rich.console import Console

    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.chat import open_session, print_compare, print_streamed, repl

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=top_p)
    session = open_session(model, adapter, run, params, think=think, system=system, quantize=quantize)
    console = Console(highlight=False)
    console.print(session.thinking_note, style="dim", markup=False)
    if prompt is None:
        repl(session, console, compare=compare)
    elif compare:
        print_compare(session, [], prompt, console)
    else:
        print_streamed(session, [], prompt, console)


@app.command()
@user_errors
def demo(
    name: Annotated[str, typer.Option(help="The assistant's name the demo teaches.")] = "马哥教育AI小助手",
    author: Annotated[str, typer.Option(help="Who the assistant says made it.")] = "马哥教育AI团队",
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data, model and run.")] = Path(
        "tuneforge-demo"
    ),
    data_only: Annotated[
        bool, typer.Option(help="Only write the data sets (the demo's, and those examples/ read) into WORKDIR.")
    ] = False,
) -> None:
    """Offline, CPU, a few minutes: teach a tiny Qwen3 its name with LoRA and compare before/after."""
    from rich.table import Table

    from tuneforge.demo import run_demo, write_data

    console = _console()
    if data_only:
        for path in write_data(workdir):
            console.print(f"wrote {path}")
        return
    answers = run_demo(workdir, name, author, log=console.print)
    table = Table(title=f"tuneforge demo: the model should now say it is {name}", show_lines=True)
    for column in ("question", "before (random base)", "after (LoRA)"):
        table.add_column(column, overflow="fold")
    for question, pair in answers.items():
        table.add_row(question, pair["before"], pair["after"])
    from rich.console import Console

    Console(highlight=False).print(table)


@app.command()
@user_errors
def serve(
    model: Annotated[str | None, typer.Option(help="Model folder or hub id (a merged model, or the base).")] = None,
    run: Annotated[str | None, typer.Option(help="A tuneforge run folder (its base + adapter, or model).")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR: a LoRA adapter served as model NAME (repeatable).")
    ] = None,
    served_model_name: Annotated[str | None, typer.Option(help="Name of the base weights in the API.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' on /v1 (default: $TUNEFORGE_API_KEY, $VLLM_API_KEY)."),
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="Read the API key from this file (not shown in ps).")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto | transformers | vllm | sglang.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + answer in tokens.")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help="GPUs per model (vllm, sglang).")] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="Share of GPU memory to use (vllm, sglang).")
    ] = None,
    trust_request_chat_template: Annotated[
        bool, typer.Option(help="Let requests bring their own chat_template (arbitrary Jinja; vLLM's flag).")
    ] = False,
    max_tokens_default: Annotated[
        int | None, typer.Option(min=1, help="max_tokens of a request that sets none [default: 2048].")
    ] = None,
    max_queued_requests: Annotated[
        int | None, typer.Option(min=0, help="Requests that may wait; more are answered 429 [default: 128].")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(min=1, help="Requests generated together in one batch \\[default: 32; vLLM's own].")
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(help="An argument passed on to vLLM / SGLang as is, e.g. --engine-arg=--enable-prefix-caching."),
    ] = None,
    quantize: Annotated[bool | None, QUANTIZE_OPTION] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the server or command that would run, and exit.")] = False,
) -> None:
    """Serve a model behind an OpenAI-compatible API: built-in (CPU too), or one command for vLLM / SGLang."""
    from tuneforge.infer.remote import resolve_api_key
    from tuneforge.infer.spec import parse_adapters, resolve_spec
    from tuneforge.serve.launch import ServeOptions, launch
    from tuneforge.serve.protocol import ServerLimits

    adapters = parse_adapters(adapter or [])
    spec = resolve_spec(model=model, run=run, adapters=adapters, served_name=served_model_name, quantize=quantize)
    sizes = dict(
        max_tokens_default=max_tokens_default, max_queued_requests=max_queued_requests, max_num_seqs=max_num_seqs
    )
    limits = ServerLimits(trust_request_chat_template, **{k: v for k, v in sizes.items() if v is not None})
    key = resolve_api_key(api_key, api_key_file)
    options = ServeOptions(
        host, port, key, max_model_len, tensor_parallel_size, gpu_memory_utilization, limits, max_num_seqs,
        tuple(engine_arg or []),
    )  # fmt: skip
    launch(spec, engine=engine, options=options, dry_run=dry_run)


@app.command("eval")
@user_errors
def eval_command(
    run: Annotated[Path | None, typer.Option(help="A run folder: its fine-tuned model vs its base.")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder or hub id (the baseline with --adapter).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder on --model (the fine-tuned one).")] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated shipped tasks, e.g. self-cognition,cmmlu-200.")
    ] = None,
    suite: Annotated[
        str | None, typer.Option(help="Suite YAML file or shipped suite name [default: self-cognition].")
    ] = None,
    baseline: Annotated[
        str,
        typer.Option(
            help="base: also evaluate the base model; none: only the fine-tuned; a run folder; or an endpoint URL "
            "(with --baseline-model)."
        ),
    ] = "base",
    limit: Annotated[int | None, typer.Option(min=1, help="At most N items per task.")] = None,
    think: Annotated[
        bool | None,
        typer.Option("--think/--no-think", help="Thinking mode \\[default: the one the run trained in]."),
    ] = None,
    quantize: Annotated[bool | None, QUANTIZE_OPTION] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder [default: RUN/eval/<suite>].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Benchmark files of shipped suites [default: .].")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server of the fine-tuned model, e.g. http://host:8000.")
    ] = None,
    served_model: Annotated[str | None, typer.Option(help="The fine-tuned model's name at --endpoint.")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File holding the endpoints' API key [default: TUNEFORGE_API_KEY, ...].")
    ] = None,
    baseline_model: Annotated[
        str | None, typer.Option(help="The baseline's name at --baseline URL (or at --endpoint for its base).")
    ] = None,
    engine: Annotated[str, typer.Option(help="transformers (built-in) or vllm (generation tasks only).")] = (
        "transformers"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight per endpoint.")] = 8,
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes, each with its own model copy (one GPU each where there are GPUs).")
    ] = 1,
) -> None:
    """Evaluate the fine-tuned model and its baseline on the same prompts; report in RUN/eval/<suite>/."""
    from rich.console import Console
    from rich.table import Table

    from tuneforge.eval.report import HEADER, table_rows
    from tuneforge.eval.request import EvalRequest
    from tuneforge.eval.run import evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    request = EvalRequest(
        run,
        model,
        adapter,
        names,
        suite,
        baseline,
        limit,
        think,
        out,
        data_dir,
        endpoint=endpoint,
        served_model=served_model,
        api_key_file=api_key_file,
        baseline_model=baseline_model,
        engine=engine,
        concurrency=concurrency,
        nproc=nproc,
        quantize=quantize,
    )
    result = evaluate(request, log=_console().print)
    table = Table(title=f"eval: {result.out}")
    for column in HEADER:
        table.add_column(column)
    for row in table_rows(result.results):
        table.add_row(*row)
    Console(highlight=False).print(table)


@app.command()
@user_errors
def webui(
    host: Annotated[str, typer.Option(help="Address to listen on; others than 127.0.0.1 want --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    auth: Annotated[str | None, typer.Option(help="USER:PASS required to open the page.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding USER:PASS (not shown in ps).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Folder of the runs the UI launches and shows.")] = Path("runs"),
    models_dir: Annotated[Path | None, typer.Option(help="Folder of local models the model picker lists.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder of data files the dataset picker lists.")] = None,
    examples_dir: Annotated[
        Path | None, typer.Option(help="Folder of example configs offered as presets (default: the checkout's).")
    ] = None,
) -> None:
    """Configure, launch, watch, compare, chat, evaluate, export in the browser (pip install 'tuneforge\\[webui]')."""
    from tuneforge.webui import require_gradio

    require_gradio()
    from tuneforge.webui.app import credentials, serve
    from tuneforge.webui.pickers import default_examples

    folders = dict(models_dir=models_dir, data_dir=data_dir, examples_dir=examples_dir or default_examples())
    serve(
        host, port, runs_dir, credentials(auth, token_file),
        warn=lambda line: typer.secho(line, fg="yellow", err=True), **folders,
    )  # fmt: skip


# --- merge and export (export/) -----------------------------------------------------------------------------

export_app = typer.Typer(help="Export a model: GGUF for llama.cpp / LM Studio, a Modelfile for Ollama.")
app.add_typer(export_app, name="export")
_GGUF_TYPE_HELP = "GGUF type: f32 | f16 | bf16 | q8_0 | q4_k_m | q5_k_m | q6_k (k-quants need tuneforge\\[llamacpp])."
_FORCE_HELP = "Replace existing outputs."
_ONTO_HELP = (
    "QLoRA adapters: merge onto the 16bit base (default) or the dequantized 4-bit weights it trained on "
    "(the default for a pre-quantized base); both are measured and reported."
)


@app.command()
@user_errors
def merge(
    run: Annotated[Path | None, typer.Option(help="A LoRA run folder (its base and adapter).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model folder or hub id (with --adapter).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to merge into --model.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (with --run, default RUN/merged).")] = None,
    dtype: Annotated[str, typer.Option(help="Weights of the merged model: bf16 | fp16 | fp32.")] = "bf16",
    onto: Annotated[str | None, typer.Option(help=_ONTO_HELP)] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Merge a LoRA adapter into its base: a plain Hugging Face model for vLLM, GGUF export, anything."""
    from tuneforge.config import ModelConfig
    from tuneforge.export.merge import merge_adapter
    from tuneforge.export.pipeline import merge_run
    from tuneforge.rundir import Run

    if run is not None and (model or adapter):
        raise UserError("merge: pass either --run RUN_DIR or --model BASE --adapter DIR, not both")
    if run is not None:
        report = merge_run(Run.open(run), out, dtype=dtype, onto=onto, force=force)
        if report is None:  # RUN/merged is this very merge of the adapter as it is now
            raise UserError(
                f"{run / 'merged'} already exists; pass --force to replace it (it is up to date: made from the "
                "adapter as it is now, with these --dtype and --onto)"
            )
    elif model is None or adapter is None or out is None:
        raise UserError("merge: pass --run RUN_DIR, or --model BASE --adapter DIR --out DIR")
    else:
        report = merge_adapter(ModelConfig(name_or_path=model), adapter, out, dtype=dtype, force=force, onto=onto)
    typer.echo(report.summary())


@export_app.callback(invoke_without_command=True)
@user_errors
def export(
    ctx: typer.Context,
    run: Annotated[Path | None, typer.Option(help="A finished run folder: merge, GGUF, Modelfile in one go.")] = None,
    to: Annotated[str, typer.Option(help="Comma-separated: gguf, ollama (ollama implies gguf).")] = "gguf,ollama",
    type_: Annotated[str, typer.Option("--type", help=_GGUF_TYPE_HELP)] = "q4_k_m",
    onto: Annotated[str | None, typer.Option(help=_ONTO_HELP)] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Export a run in one go (--run), or one step with a sub-command (gguf, ollama)."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        raise UserError("export: pass --run RUN_DIR, or use `tuneforge export gguf` / `tuneforge export ollama`")
    from tuneforge.export.pipeline import export_run

    targets = [t.strip() for t in to.split(",") if t.strip()]
    result = export_run(run, targets, type_, force=force, onto=onto, log=typer.echo)
    typer.echo(result.merge.summary() if result.merge else f"using the model in {result.model}")
    typer.echo(f"wrote {result.gguf}")
    if result.ollama_create:
        typer.echo(f"create the Ollama model with:\n  {result.ollama_create}")


@export_app.command("gguf")
@user_errors
def export_gguf_command(
    model: Annotated[Path, typer.Option(help="Hugging Face model folder (merged, or a full fine-tune).")],
    out: Annotated[Path, typer.Option(help="Output .gguf file.")],
    type_: Annotated[str, typer.Option("--type", help=_GGUF_TYPE_HELP)] = "f16",
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Convert a Hugging Face Qwen3 / Qwen2 / Llama folder into one GGUF file."""
    from tuneforge.export.gguf import export_gguf

    path = export_gguf(model, out, type_, force=force)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@export_app.command("ollama")
@user_errors
def export_ollama_command(
    gguf: Annotated[Path, typer.Option(help="The .gguf file (Qwen3, QwQ or DeepSeek-R1 chat template).")],
    out: Annotated[Path, typer.Option(help="Folder for the Modelfile.")],
    sampling: Annotated[
        str, typer.Option(help="The model card's sampling: thinking | non-thinking (Qwen3).")
    ] = "thinking",
    parameter: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE: a Modelfile PARAMETER, e.g. num_ctx=8192 (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Write an Ollama Modelfile: FROM the GGUF, its family's chat template, stop tokens, sampling."""
    from tuneforge.export.ollama import export_ollama, parse_parameters

    command = export_ollama(gguf, out, sampling=sampling, force=force, parameters=parse_parameters(parameter or []))
    typer.echo(f"wrote {out / 'Modelfile'}; create the Ollama model with:\n  {command}")


# Command groups in tuneforge/commands/, registered here (after user_errors, which they are wrapped in).
from tuneforge.commands.config_import import config_export, config_import  # noqa: E402
from tuneforge.commands.download import download_command  # noqa: E402
from tuneforge.commands.synth import synth_command  # noqa: E402

config_app.command("import")(user_errors(config_import))
config_app.command("export")(user_errors(config_export))
app.command("download")(user_errors(download_command))
app.command("synth")(user_errors(synth_command))
bundle_commands.register(app, user_errors)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
