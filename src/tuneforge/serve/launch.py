"""`tuneforge serve`: pick an engine and start it: the built-in server, or the equivalent vLLM / SGLang command.

The vLLM and SGLang commands serve the same names as the built-in server (infer/spec.py), with the parsers
that give the same answer shape: `--reasoning-parser qwen3` for Qwen3, `deepseek_r1` for templates that open the
think block in the prompt (QwQ, the DeepSeek-R1 distills), the hermes-style tool parser for the Qwen family. A
QLoRA run's base is quantized while it loads (`--quantization bitsandbytes`), and a run's trained thinking mode is
the default of requests that set none (`--default-chat-template-kwargs`). `--dry-run` prints the command (it needs
neither engine installed); otherwise the process
becomes that command (exec), so signals and exit codes are the engine's own.

The API key comes from `--api-key`, `--api-key-file`, or the environment (`TUNEFORGE_API_KEY`, then
`VLLM_API_KEY` as vLLM reads it); it is never printed (launch lines show `***`) and reaches vLLM through its
environment rather than its command line, where `ps` would show it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import ModelConfig
from tuneforge.errors import UserError
from tuneforge.infer.offline_vllm import DEFAULT_MAX_LORA_RANK, max_lora_rank
from tuneforge.infer.remote import KEY_ENV
from tuneforge.infer.spec import ModelSpec
from tuneforge.serve.protocol import ServerLimits

ENGINES = ("auto", "transformers", "vllm", "sglang")
# Where a template's think block opens: in the model's output (Qwen3, DeepSeek-R1-0528-Qwen3), or in the generation
# prompt (QwQ, the DeepSeek-R1 distills), whose output then starts inside the reasoning with no <think> of its own.
REASONING_PARSERS = {
    "vllm": {"output": "qwen3", "prompt": "deepseek_r1"},
    "sglang": {"output": "qwen3", "prompt": "deepseek-r1"},
}
HIDDEN = "***"


@dataclass(frozen=True)
class ServeOptions:
    """Server flags shared by all engines (tensor parallel and GPU memory only matter to vLLM and SGLang)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    limits: ServerLimits = ServerLimits()  # the built-in server's; vLLM gets --trust-request-chat-template
    max_num_seqs: int | None = None  # as given: vLLM's --max-num-seqs, SGLang's --max-running-requests
    engine_args: tuple[str, ...] = ()  # --engine-arg: passed on to vLLM / SGLang as they are, last


def open_without_key_warning(host: str, api_key: str | None) -> str | None:
    """A warning when the server listens beyond this machine with no API key, else None."""
    if api_key or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name other than localhost: it may resolve to any interface
        pass
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this port can use the model; "
        "set TUNEFORGE_API_KEY or pass --api-key-file"
    )


def choose_engine(requested: str) -> str:
    """The engine to run: `auto` is vLLM on a machine with a GPU where vLLM is installed, else the built-in one."""
    if requested not in ENGINES:
        raise UserError(f"--engine {requested}: expected one of {', '.join(ENGINES)}")
    if requested != "auto":
        return requested
    import torch

    return "vllm" if torch.cuda.is_available() and shutil.which("vllm") else "transformers"


def build_command(engine: str, spec: ModelSpec, options: ServeOptions) -> tuple[list[str], dict[str, str]]:
    """The vLLM or SGLang command line serving `spec`, and the environment variables it needs."""
    model = spec.model
    family = _family(model)
    vllm = engine == "vllm"
    cmd = (
        ["vllm", "serve", model.name_or_path]
        if vllm
        else [sys.executable, "-m", "sglang.launch_server", "--model-path", model.name_or_path]
    )
    cmd += ["--served-model-name", spec.name, "--host", options.host, "--port", str(options.port)]
    if model.revision:
        cmd += ["--revision", model.revision]
    if spec.tokenizer.name_or_path != model.name_or_path:  # a run's adapter folder carries the trained tokenizer
        cmd += ["--tokenizer" if vllm else "--tokenizer-path", spec.tokenizer.name_or_path]
    if model.trust_remote_code:
        cmd += ["--trust-remote-code"]
    if spec.adapters:
        modules = [f"{name}={path}" for name, path in spec.adapters.items()]
        cmd += ["--enable-lora", "--lora-modules" if vllm else "--lora-paths", *modules]
        rank = max_lora_rank(spec.adapters.values())
        if vllm and rank > DEFAULT_MAX_LORA_RANK:
            cmd += ["--max-lora-rank", str(rank)]
    style = think_style(spec)
    if style is not None:
        cmd += ["--reasoning-parser", REASONING_PARSERS[engine][style]]
    if "qwen" in family:
        cmd += (
            ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"] if vllm else ["--tool-call-parser", "qwen25"]
        )
    flags = {
        "vllm": ("--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization"),
        "sglang": ("--tp-size", "--context-length", "--mem-fraction-static"),
    }[engine]
    values = (options.tensor_parallel_size, options.max_model_len, options.gpu_memory_utilization)
    for flag, value in zip(flags, values):
        if value is not None:
            cmd += [flag, str(value)]
    if vllm and options.limits.trust_request_chat_template:
        cmd += ["--trust-request-chat-template"]
    if options.max_num_seqs is not None:
        cmd += ["--max-num-seqs" if vllm else "--max-running-requests", str(options.max_num_seqs)]
    if vllm and spec.quantize is not None:  # a QLoRA run's base, quantized while it loads as in training
        cmd += ["--quantization", "bitsandbytes"]
    if vllm and len(set(spec.thinking.values())) == 1:
        # vLLM has one default for every served name: the run's trained mode (its base then answers in it too).
        enable = next(iter(spec.thinking.values()))
        cmd += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": enable})]
    cmd += [word for arg in options.engine_args for word in shlex.split(arg)]
    env = {}
    if model.hub == "modelscope":
        env = {"VLLM_USE_MODELSCOPE": "True"} if vllm else {"SGLANG_USE_MODELSCOPE": "true"}
    if options.api_key and vllm:
        env["VLLM_API_KEY"] = options.api_key  # vLLM reads it there; on the command line `ps` would show it
    elif options.api_key:
        cmd += ["--api-key", options.api_key]
    return cmd, env


def shown(cmd: list[str], env: dict[str, str]) -> str:
    """The launch line as printed: environment then command, with the API key replaced by ***."""
    words = [f"{k}={HIDDEN}" if k in KEY_ENV else shlex.quote(f"{k}={v}") for k, v in env.items()]
    words += [HIDDEN if i and cmd[i - 1] == "--api-key" else shlex.quote(word) for i, word in enumerate(cmd)]
    return " ".join(words)


def launch(
    spec: ModelSpec, *, engine: str = "auto", options: ServeOptions = ServeOptions(), dry_run: bool = False
) -> None:
    """Serve `spec` with the chosen engine (runs until interrupted), or print what would run."""
    # --device-map is the built-in engine's own way over several GPUs, so auto picks that engine for it.
    chosen = "transformers" if spec.device_map and engine == "auto" else choose_engine(engine)
    warning = open_without_key_warning(options.host, options.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if chosen == "transformers":
        _serve_builtin(spec, options, dry_run)
        return
    if spec.device_map:
        raise UserError(
            f"--device-map is for the built-in engine (--engine transformers); {chosen} splits a model over GPUs "
            "with --tensor-parallel-size N"
        )
    if not dry_run:
        _require(chosen)
    cmd, env = build_command(chosen, spec, options)
    print(shown(cmd, env), flush=True)
    if not dry_run:
        os.execvpe(cmd[0], cmd, {**os.environ, **env})


def _serve_builtin(spec: ModelSpec, options: ServeOptions, dry_run: bool) -> None:
    gpu_flags = {
        "--tensor-parallel-size": options.tensor_parallel_size,
        "--gpu-memory-utilization": options.gpu_memory_utilization,
    }
    gpu_flags["--engine-arg"] = options.engine_args or None
    ignored = [flag for flag, value in gpu_flags.items() if value is not None]
    if ignored:
        print(f"note: {', '.join(ignored)} only apply to --engine vllm or sglang; the built-in engine ignores them")
    print(f"built-in engine: serving {', '.join(spec.names)} at http://{options.host}:{options.port}/v1", flush=True)
    for name, enable in spec.thinking.items():
        print(f"{name}: thinking {'on' if enable else 'off'} by default (the mode it trained in), unless a request "
              "sets chat_template_kwargs.enable_thinking", flush=True)  # fmt: skip
    if dry_run:
        return
    from tuneforge.infer.engine import load_engine

    try:
        from tuneforge.serve.app import run_server
    except ImportError as exc:
        raise UserError(f"the built-in server needs {exc.name}: pip install 'tuneforge[serve]'") from None

    engine = load_engine(spec, max_model_len=options.max_model_len, max_batch_size=options.limits.max_num_seqs)
    run_server(
        engine,
        host=options.host,
        port=options.port,
        api_key=options.api_key,
        limits=options.limits,
        thinking=spec.thinking,
    )


def _require(engine: str) -> None:
    """A clear error when the chosen engine is not installed."""
    found = shutil.which("vllm") if engine == "vllm" else importlib.util.find_spec("sglang")
    if not found:
        install = "pip install vllm" if engine == "vllm" else "pip install 'sglang[all]'"
        raise UserError(
            f"--engine {engine}: {engine} is not installed in this environment ({install}, on Linux with an NVIDIA "
            "GPU); use --engine transformers for the built-in server, or --dry-run to print the command"
        )


def think_style(spec: ModelSpec) -> str | None:
    """Where the chat template opens the think block: "output", "prompt" (see REASONING_PARSERS) or None (no <think>).

    Read from the template of a local tokenizer, as the built-in engine reads it; a hub id goes by its name.
    """
    folder = Path(spec.tokenizer.name_or_path)
    if (folder / "tokenizer.json").is_file():
        from tuneforge.data.render import template_markers
        from tuneforge.model.load import load_tokenizer

        tokenizer = load_tokenizer(spec.tokenizer)
        if template_markers(tokenizer).think_on.lstrip().startswith("<think>"):
            return "prompt"
        # R1-0528-Qwen3's template names only </think> (to strip history reasoning); the model writes <think>.
        return "output" if "think>" in tokenizer.chat_template else None
    name = spec.model.name_or_path.lower()
    if "qwq" in name or ("deepseek-r1" in name and "0528-qwen3" not in name):
        return "prompt"
    return "output" if "qwen3" in _family(spec.model) else None


def _family(model: ModelConfig) -> str:
    """The model family: config.json's model_type for a local folder, else the hub id (Qwen/Qwen3-8B)."""
    config = Path(model.name_or_path) / "config.json"
    if config.is_file():
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", "")).lower()
    return model.name_or_path.lower()
