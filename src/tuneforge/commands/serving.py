"""`tuneforge chat`, `serve` and `eval`: use a model, serve it, measure it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.commands.common import (
    DEVICE_MAP_OPTION,
    MAX_MEMORY_OPTION,
    QUANTIZE_OPTION,
    choice,
    err_console,
    user_errors,
)
from tuneforge.eval.request import ENGINES as EVAL_ENGINES
from tuneforge.model.load import DEVICE_MAPS, DeviceMap
from tuneforge.serve.launch import ENGINES as SERVE_ENGINES


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
    device_map: Annotated[choice(DEVICE_MAPS) | None, DEVICE_MAP_OPTION] = None,
    max_memory: Annotated[str | None, MAX_MEMORY_OPTION] = None,
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
    placement = DeviceMap.parse(device_map, max_memory)
    session = open_session(
        model, adapter, run, params, think=think, system=system, quantize=quantize, device_map=placement
    )
    console = Console(highlight=False)
    console.print(session.thinking_note, style="dim", markup=False)
    if prompt is None:
        repl(session, console, compare=compare)
    elif compare:
        print_compare(session, [], prompt, console)
    else:
        print_streamed(session, [], prompt, console)


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
    engine: Annotated[choice(SERVE_ENGINES), typer.Option(help="The engine that serves.")] = "auto",
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
    device_map: Annotated[choice(DEVICE_MAPS) | None, DEVICE_MAP_OPTION] = None,
    max_memory: Annotated[str | None, MAX_MEMORY_OPTION] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the server or command that would run, and exit.")] = False,
) -> None:
    """Serve a model behind an OpenAI-compatible API: built-in (CPU too), or one command for vLLM / SGLang."""
    from tuneforge.infer.remote import resolve_api_key
    from tuneforge.infer.spec import parse_adapters, resolve_spec
    from tuneforge.serve.launch import ServeOptions, launch
    from tuneforge.serve.protocol import ServerLimits

    adapters = parse_adapters(adapter or [])
    spec = resolve_spec(
        model=model,
        run=run,
        adapters=adapters,
        served_name=served_model_name,
        quantize=quantize,
        device_map=DeviceMap.parse(device_map, max_memory),
    )
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
    device_map: Annotated[choice(DEVICE_MAPS) | None, DEVICE_MAP_OPTION] = None,
    max_memory: Annotated[str | None, MAX_MEMORY_OPTION] = None,
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
    engine: Annotated[
        choice(EVAL_ENGINES), typer.Option(help="transformers (built-in) or vllm (generation tasks only).")
    ] = "transformers",
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
        device_map=DeviceMap.parse(device_map, max_memory),
    )
    result = evaluate(request, log=err_console().print)
    table = Table(title=f"eval: {result.out}")
    for column in HEADER:
        table.add_column(column)
    for row in table_rows(result.results):
        table.add_row(*row)
    Console(highlight=False).print(table)


def register(app: typer.Typer) -> None:
    """Add chat, serve and eval to the CLI."""
    app.command()(chat)
    app.command()(serve)
    app.command("eval")(eval_command)
