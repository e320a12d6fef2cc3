"""`tuneforge train`, `estimate`, `env`, `demo` and `webui`: run training and what helps to plan and watch it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from tuneforge.commands.common import choice, err_console, user_errors
from tuneforge.config import DistributedConfig, MethodConfig
from tuneforge.strategy import DEEPSPEED_PRESETS

METHODS = get_args(MethodConfig.model_fields["type"].annotation)
STRATEGIES = get_args(DistributedConfig.model_fields["strategy"].annotation)


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
    status = train_command(config, overrides, log=err_console().print)
    if status:
        raise typer.Exit(status)


@user_errors
def estimate(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (or describe the job by flags).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides.")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder or hub id (model.name_or_path).")] = None,
    method: Annotated[choice(METHODS) | None, typer.Option(help="method.type.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest sample in tokens (data.max_length).")] = None,
    batch: Annotated[int | None, typer.Option(help="Per-device batch size (train.per_device_batch_size).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Checkpointing.")
    ] = None,
    strategy: Annotated[choice(STRATEGIES) | None, typer.Option(help="distributed.strategy.")] = None,
    deepspeed: Annotated[
        str | None, typer.Option(help=f"{' | '.join(DEEPSPEED_PRESETS)}, or a DeepSpeed JSON file.")
    ] = None,
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
    from tuneforge.estimate.report import GPU_SIZES, config_report, job_config, print_report

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
    sizes = () if cpu else ((gpu_memory,) if gpu_memory else GPU_SIZES)
    if config is not None and steps and not serve:
        config_report(cfg, err_console(), cpu, sizes)  # the data prepared for the step count, as the web UI shows
        return
    job = Job.from_config(cfg, load_shape(cfg.model), "cpu" if cpu else "cuda")
    if serve:
        from tuneforge.estimate.serve import estimate_serve, serve_report

        for line in serve_report(estimate_serve(job, cfg.data.max_length, max_num_seqs), sizes, gpu_memory_utilization):
            typer.echo(line)
    else:  # no data prepared: rows as wide as data.max_length, no step count
        print_report(estimate_memory(job), None, sizes, err_console())


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

    console = err_console()
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


def register(app: typer.Typer) -> None:
    """Add train, estimate, env, demo and webui to the CLI."""
    for command in (train, estimate, env, demo, webui):
        app.command()(command)
