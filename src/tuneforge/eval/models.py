"""Which models an eval compares, and the engines that run them: a local run or model, an OpenAI-compatible
endpoint, vLLM; the baseline its base, another run, or another endpoint.

Models share an engine wherever they can: a LoRA run and its base are one loaded model (adapter on / off), a
baseline run with the same base adds its adapter to that load, two served models of one server share a client.
Otherwise the roles' engines are put behind one `Router`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError
from tuneforge.eval.judge import check_baseline, check_judges
from tuneforge.eval.request import ENGINES
from tuneforge.infer.cache import model_fingerprints
from tuneforge.infer.offline_vllm import VllmEngine
from tuneforge.infer.remote import RemoteEngine, Router, client_api_key, is_url
from tuneforge.rundir import Run

if TYPE_CHECKING:
    from tuneforge.eval.request import EvalRequest
    from tuneforge.eval.suite import TaskConfig
    from tuneforge.infer.backend import ChatBackend
    from tuneforge.infer.spec import ModelSpec

TUNED_ADAPTER = "tuned"  # served name of an --adapter given with --model
BASELINE_ADAPTER = "baseline-run"  # served name of a --baseline run's adapter loaded onto the fine-tuned run's base


@dataclass
class Models:
    """The engine the tasks use, the name it knows each role by, and each role's served model name (the report's)."""

    engine: ChatBackend
    names: dict[str, str]  # role (baseline / tuned) -> name to pass to the engine
    served: dict[str, str]  # role -> served model name
    # name passed to the engine -> fingerprint of the weights behind it, for the item cache (infer/cache.py); None
    # when a side is behind an endpoint, whose weights cannot be known from here (nothing is cached then)
    fingerprints: dict[str, str] | None = None

    def close(self) -> None:
        """Stop what the backends started (the worker processes of --nproc, the clients' connections)."""
        self.engine.close()


def check_flags(request: EvalRequest) -> None:
    """The flags that only make sense together, in one line each (before anything loads)."""
    local = request.run is not None or request.model is not None
    if request.endpoint and (local or request.adapter):
        raise UserError("eval: --endpoint evaluates a served model; leave out --run, --model and --adapter")
    if request.endpoint and not request.served_model:
        raise UserError("eval: --endpoint needs --served-model NAME (the model's name there; GET URL/v1/models)")
    if request.served_model and not request.endpoint:
        raise UserError("eval: --served-model goes with --endpoint URL")
    if not local and not request.endpoint:
        raise UserError("eval: pass --run RUN_DIR, --model DIR [--adapter DIR], or --endpoint URL --served-model NAME")
    if request.run is not None and request.adapter is not None:
        raise UserError("eval: --adapter goes with --model; a run brings its own adapter")
    if is_url(request.baseline) and not request.baseline_model:
        raise UserError(f"eval: --baseline {request.baseline} needs --baseline-model NAME (its name on that server)")
    if request.baseline == "base" and request.endpoint and not request.baseline_model:
        raise UserError(
            "eval: the base of a served model is not known; name it with --baseline-model NAME (served at the same "
            "--endpoint), or pass --baseline none / RUN / URL"
        )
    if request.baseline_model and not (is_url(request.baseline) or (request.baseline == "base" and request.endpoint)):
        raise UserError("eval: --baseline-model goes with --baseline URL, or with --endpoint for its base")
    if request.engine not in ENGINES:
        raise UserError(f"eval: --engine {request.engine}: expected {' or '.join(ENGINES)}")
    if request.engine == "vllm" and request.endpoint:
        raise UserError("eval: --engine vllm runs a local model; --endpoint already names a server")
    if request.nproc > 1 and (request.endpoint or is_url(request.baseline) or request.engine == "vllm"):
        raise UserError(
            "eval: --nproc N shards a local model over processes; it does not go with --endpoint, "
            "--baseline URL or --engine vllm"
        )
    if request.device_map and (request.engine == "vllm" or request.nproc > 1):
        raise UserError(
            "eval: --device-map spreads one copy of the model over the GPUs in this process; it does not go with "
            "--engine vllm (which splits with --tensor-parallel-size) or --nproc N (a copy per GPU)"
        )
    if request.engine == "vllm":
        from tuneforge.infer.offline_vllm import require_vllm

        require_vllm()


def needs_likelihood(task: TaskConfig) -> bool:
    """Whether the task scores given tokens (loss, multiple choice by likelihood) instead of generating."""
    return task.type == "loss" or (task.type == "mcq" and task.method == "likelihood")


def check_scoring(tasks: Sequence[TaskConfig], backend: type[ChatBackend], where: str) -> None:
    """Refuse, all in one message, the tasks that need log-probabilities when the backend (its class) cannot score."""
    refused = [task for task in tasks if needs_likelihood(task)]
    if refused and not backend.can_score:
        raise UserError(
            "\n".join(
                f"task {task.name} ({task.type}{', method: likelihood' if task.type == 'mcq' else ''}) needs token "
                f"log-probabilities, which {where} cannot give; "
                + ("set method: generate on it" if task.type == "mcq" else "leave it out (--tasks or the suite)")
                for task in refused
            )
        )


def open_models(
    request: EvalRequest, tasks: Sequence[TaskConfig], log: Callable[..., Any] = print, run: Run | None = None
) -> Models:
    """Open the fine-tuned model and its baseline (flags: check_flags first; `run`: the caller's open --run)."""
    roles: dict[str, tuple[Any, str]] = {}  # role -> (engine, served name)
    remotes: dict[str, list[str]] = {}  # url -> served names asked for there
    if request.endpoint:
        remotes[request.endpoint] = [request.served_model]
    baseline_run = _baseline_run(request.baseline)
    spec, tuned_name = None, None
    if not request.endpoint:
        spec, tuned_name = _local_spec(request, run)
    baseline_spec = None
    if request.baseline == "base" and request.endpoint:
        remotes[request.endpoint].insert(0, request.baseline_model)
    elif is_url(request.baseline):
        remotes.setdefault(request.baseline, []).insert(0, request.baseline_model)
    elif baseline_run is not None:
        if spec is not None and spec.adapters and baseline_run.adapter.is_dir() and _same_base(spec, baseline_run):
            # Same base weights: the baseline run's adapter joins the one load (adapters switched per row).
            spec = dataclasses.replace(spec, adapters={**spec.adapters, BASELINE_ADAPTER: baseline_run.adapter})
        else:
            from tuneforge.infer.spec import resolve_spec

            baseline_spec = resolve_spec(run=baseline_run, quantize=request.quantize, device_map=request.device_map)
            if request.engine == "vllm":
                raise UserError(
                    f"--engine vllm: --baseline {request.baseline} is not a LoRA on the same base, so it is a second "
                    "model, and vLLM holds one per process; serve it and pass --baseline URL --baseline-model NAME"
                )

    # Before anything connects or loads: tasks that need a baseline, or log-probabilities an engine here cannot give.
    has_baseline = request.baseline != "none" and (request.baseline != "base" or spec is None or len(spec.names) > 1)
    check_baseline(list(tasks), has_baseline)
    for url in remotes:
        check_scoring(tasks, RemoteEngine, f"the endpoint {url}")
    if request.engine == "vllm":
        check_scoring(tasks, VllmEngine, "--engine vllm")
    check_judges(list(tasks))  # then the endpoints, the judges' first
    key = client_api_key(request.api_key_file) if remotes else None
    for url, names in remotes.items():
        engine = RemoteEngine(url, names, key, concurrency=request.concurrency)
        engine.check()
        if request.endpoint == url:
            roles["tuned"] = (engine, request.served_model)
        if url == request.baseline or (request.baseline == "base" and request.endpoint == url):
            roles["baseline"] = (engine, request.baseline_model)
    prints: dict[str, str] = {}  # role -> fingerprint of a local side
    if spec is not None:
        engine = _load(spec, request, log)
        roles["tuned"] = (engine, tuned_name)
        if request.baseline == "base" and len(spec.names) > 1:
            roles["baseline"] = (engine, spec.names[0])
        elif BASELINE_ADAPTER in spec.adapters:
            roles["baseline"] = (engine, BASELINE_ADAPTER)
        local = model_fingerprints(spec)
        prints.update({role: local[name] for role, (e, name) in roles.items() if e is engine})
    if baseline_spec is not None:
        roles["baseline"] = (_load(baseline_spec, request, log), baseline_spec.names[-1])
        prints["baseline"] = model_fingerprints(baseline_spec)[baseline_spec.names[-1]]

    roles = {role: roles[role] for role in ("baseline", "tuned") if role in roles}
    served = {role: _served(role, name, baseline_run) for role, (_, name) in roles.items()}
    engines = {id(engine) for engine, _ in roles.values()}
    names = {role: name for role, (_, name) in roles.items()} if len(engines) == 1 else {role: role for role in roles}
    # The engine kind is part of the fingerprint: vLLM's answers are not the built-in engine's.
    fingerprints = {names[r]: f"{request.engine}:{prints[r]}" for r in roles} if prints.keys() == roles.keys() else None
    engine = roles["tuned"][0] if len(engines) == 1 else Router(roles, render_with="tuned")
    return Models(engine, names, served, fingerprints)


def _baseline_run(baseline: str) -> Run | None:
    """The run folder --baseline names, or None for base / none / a URL."""
    if baseline in ("base", "none") or is_url(baseline):
        return None
    try:
        return Run.open(baseline, "--baseline")
    except UserError as exc:
        raise UserError(f"{exc}, or base, none or an http(s) URL") from None


def _local_spec(request: EvalRequest, run: Run | None) -> tuple[ModelSpec, str]:
    """The local fine-tuned model's spec (with its base where --baseline base asks for it) and its served name."""
    from tuneforge.infer.spec import resolve_spec

    spec = resolve_spec(
        model=request.model if request.run is None else None,
        run=run or request.run,
        adapters={TUNED_ADAPTER: request.adapter} if request.adapter else None,
        with_base=request.baseline == "base",
        quantize=request.quantize,
        device_map=request.device_map,
    )
    return spec, spec.names[-1]


def _same_base(spec: ModelSpec, run: Run) -> bool:
    return spec.model == run.base_model_config()


def _served(role: str, name: str, baseline_run: Run | None) -> str:
    """The name the report shows: a baseline run's adapter by its run folder's name."""
    return baseline_run.name if role == "baseline" and name == BASELINE_ADAPTER and baseline_run else name


def _load(spec: ModelSpec, request: EvalRequest, log: Callable[..., Any]) -> ChatBackend:
    vllm = request.engine == "vllm"
    copies = f" in {request.nproc} processes" if request.nproc > 1 else ""
    log(f"eval: loading {', '.join(spec.names)}" + (" with vLLM" if vllm else "") + copies)
    if vllm:
        from tuneforge.infer.offline_vllm import load_vllm

        return load_vllm(spec)
    if request.nproc > 1:
        from tuneforge.infer.shard import start_sharded

        return start_sharded(spec, request.nproc)
    from tuneforge.infer.engine import load_engine

    return load_engine(spec)
