"""`tuneforge eval --nproc N`: the items of every engine request split over N processes, each with its own model.

Data parallel: worker k loads the whole model (on GPU k when there are GPUs, else on CPU with its share of the
cores), and every batched request (`generate_batch`, `score_ids`, `next_token_logprobs`) is cut into N contiguous
slices, one per worker, run at the same time and put back together in input order. The tasks, the cache and the
report run in this process, which holds only the tokenizer (prompts are rendered here).

    engine = start_sharded(spec, nproc=2)   # a ChatBackend, as the Engine it shards
    engine.next_token_logprobs(prompts, ["A", "B", "C", "D"])
    engine.close()
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatResult, SamplingParams, model_per_item

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from tuneforge.data.conversation import Message
    from tuneforge.infer.engine import Engine
    from tuneforge.infer.spec import ModelSpec


def _worker(conn: Connection, spec: ModelSpec, device: str | None, threads: int) -> None:
    """One process: pin its GPU (or CPU threads) before torch starts, load the engine, answer requests until None."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch

    from tuneforge.infer.engine import load_engine

    torch.set_num_threads(threads)
    try:
        engine = load_engine(spec)
    except Exception as exc:  # noqa: BLE001 -- the parent raises it; this process has nothing else to do
        conn.send(exc)
        return
    conn.send(None)
    while (request := conn.recv()) is not None:
        method, items, kwargs = request
        try:
            if method == "generate_batch":
                conversations, names = zip(*items)
                result: Any = engine.generate_batch(list(conversations), model=list(names), **kwargs)
            else:
                result = getattr(engine, method)(items, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- sent back and raised in the parent, like a local call
            result = exc
        conn.send(result)


def _devices(nproc: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker: one GPU each, or None for all on CPU."""
    import torch

    if not torch.cuda.is_available():
        return [None] * nproc
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if nproc > len(gpus):
        raise UserError(f"--nproc {nproc}: only {len(gpus)} GPU(s) visible here; one process per GPU, so at most that")
    return gpus[:nproc]


class ShardedEngine:
    """The Engine's batched requests (a `ChatBackend`) spread over worker processes."""

    can_score = True  # every worker holds the weights

    def __init__(self, local: Engine, conns: list[Connection], processes: list[Any]) -> None:
        self.local = local  # tokenizer and chat template only: rendering happens here
        self.tokenizer = local.tokenizer
        self.conns = conns
        self.processes = processes

    @property
    def names(self) -> list[str]:
        """Served model names, as each worker's engine serves them."""
        return self.local.names

    def close(self) -> None:
        """Ask every worker to stop, and wait for it (killed after 30 s)."""
        _stop(self.conns, self.processes)

    def render(self, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> str:
        """The prompt text, as `Engine.render`."""
        return self.local.render(messages, enable_thinking=enable_thinking)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> list[ChatResult]:
        """As `Engine.generate_batch`, each worker answering a slice."""
        names = model_per_item(model, len(conversations))
        items = list(zip(conversations, names))
        return self._map("generate_batch", items, params=params, enable_thinking=enable_thinking)

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], *, model: str | None = None) -> list[list[float]]:
        """As `Engine.score_ids`, each worker scoring a slice."""
        return self._map("score_ids", list(pairs), model=model)

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, model: str | None = None
    ) -> list[list[float]]:
        """As `Engine.next_token_logprobs`, each worker scoring a slice."""
        return self._map("next_token_logprobs", list(prompts), candidates=list(candidates), model=model)

    def _map(self, method: str, items: list[Any], **kwargs: Any) -> list[Any]:
        """Contiguous slices of `items` to the workers at once; their results joined in input order."""
        size, extra = divmod(len(items), len(self.conns))
        bounds = [k * size + min(k, extra) for k in range(len(self.conns) + 1)]
        busy = []
        for conn, start, end in zip(self.conns, bounds, bounds[1:]):
            if end > start:
                conn.send((method, items[start:end], kwargs))
                busy.append(conn)
        results = [_receive(conn) for conn in busy]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [value for result in results for value in result]


def _receive(conn: Connection) -> Any:
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(
            "an eval worker process died (killed, out of memory); rerun: done items are cached"
        ) from None


def start_sharded(spec: ModelSpec, nproc: int) -> ShardedEngine:
    """Start `nproc` worker processes, each loading `spec`, once all have loaded; `close()` stops them."""
    import multiprocessing

    from tuneforge.infer.engine import Engine
    from tuneforge.model.load import load_tokenizer

    devices = _devices(nproc)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    context = multiprocessing.get_context("spawn")  # a fork would copy this process's torch threads and locks
    conns, processes = [], []
    try:
        for device in devices:
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, spec, device, threads), daemon=True)
            process.start()
            child.close()
            conns.append(parent)
            processes.append(process)
        for conn in conns:
            error = _receive(conn)
            if error is not None:
                raise error
        local = Engine(load_tokenizer(spec.tokenizer), dict.fromkeys(spec.names), _no_generation, max_model_len=0)
    except BaseException:
        _stop(conns, processes)
        raise
    return ShardedEngine(local, conns, processes)


def _stop(conns: list[Connection], processes: list[Any]) -> None:
    for conn, process in zip(conns, processes):
        with contextlib.suppress(OSError):
            conn.send(None)
        process.join(30)
        if process.is_alive():
            process.kill()


def _no_generation(*_: Any) -> Iterator[int]:
    raise RuntimeError("the sharded engine generates in its workers, never in the parent")
