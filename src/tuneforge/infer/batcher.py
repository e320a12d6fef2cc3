"""The step-level batcher: loaded models as one `TokenSource`, rows joining and leaving a shared KV cache each step.

This is the only code that reaches into transformers' cache internals (`cache.layers`, `batch_select_indices`,
the `cache` / `past_key_values` keyword); `load_engine` (infer/engine.py) builds one over the spec's weights.
It also plans offline batches (`batched`: similar sizes together, halved on CUDA out-of-memory).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tuneforge.errors import UserError
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.structured import Constraint, mask_logits

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: smaller temperatures decode greedily
T = TypeVar("T")


_END = object()  # a row's queue: the batch is done with it (eos or max tokens)
PAD_ID = 0  # what fills padded positions; the attention mask hides them, so any valid id does


@dataclass(eq=False)
class _Row:
    """One generation inside the batcher: its prompt, how to pick tokens, and where its tokens go."""

    prompt: list[int]
    max_new_tokens: int
    adapter: str | None
    sampling: _Sampling | None  # None: greedy
    constraint: Constraint | None = None  # a response_format's grammar (infer/structured.py)
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    produced: int = 0
    last: int = 0
    cancelled: bool = False


@dataclass(eq=False)
class _Group:
    """The rows running on one set of weights: one KV cache, left-padded, and its attention mask."""

    model: Any
    peft: bool  # rows choose their adapter per row through peft's adapter_names
    cache_kwarg: str  # transformers renamed past_key_values to cache (the old name goes in 5.40); we accept >= 4.56
    rows: list[_Row] = field(default_factory=list)
    waiting: list[_Row] = field(default_factory=list)
    cache: Any = None
    mask: torch.Tensor | None = None


class Batcher:
    """Loaded models as a batched TokenSource: step-level batching over a shared, left-padded KV cache.

    Every request is a row; each step runs one forward pass per set of weights for all its rows, rows for
    different LoRA adapters included (peft's `adapter_names`). A request that arrives while others run is
    prefilled and joins the next step; a row leaves at eos, at its max tokens, or when its reader closes it.

    Why our own scheduler: transformers' `generate` runs a fixed batch to the end (no joining, one set of
    sampling parameters, no per-row cancel), and its continuous-batching manager packs all requests into one
    ragged row, which peft's per-row `adapter_names` cannot address, and takes one generation config for all.
    """

    def __init__(self, targets: dict[str, tuple[Any, str | None]], eos_ids: set[int], max_batch_size: int) -> None:
        self.targets = targets  # served name -> (model, adapter name or None for the base)
        self.eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self._groups: dict[int, _Group] = {}
        for model, _ in targets.values():
            base = model.get_base_model() if hasattr(model, "peft_config") else model
            kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
            self._groups.setdefault(id(model), _Group(model, hasattr(model, "peft_config"), kwarg))
        self._lock = threading.Lock()
        # peft routes adapter_names through forward hooks it adds to every LoRA layer for the duration of a call:
        # two concurrent forwards (a batch step and a score call) would apply each other's routing.
        self._forward_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        _BATCHERS.add(self)
        # The batcher gives up the GIL in every torch op (~150 a step on the tests' tiny Qwen3) and must win it back
        # after each; while request threads run Python (decoding, parsing, the server's SSE), each return waits up
        # to the interpreter's switch interval, 5 ms by default: CPython's convoy effect (bpo-7946, "Convoy effect
        # with I/O bound threads and New GIL"); this can go with a fix there or on a free-threaded build. With 0.5 ms
        # bench/serve_load.py ran 1.6x (1 client) to 1.8x (16 clients) faster (docs/performance.md). The setting is
        # process-wide, so it is only ever lowered.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the current step (at interpreter exit: see _stop_batchers)."""
        with self._lock:
            self._closing, thread = True, self._thread
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> int:
        """Rows in a batch now (waiting ones not counted)."""
        return sum(len(g.rows) for g in self._groups.values())

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, name: str, constraint: Constraint | None = None
    ) -> Iterator[int]:
        """Queue the prompt for the next step; return its next-token ids, which end at eos or max tokens.

        With a `constraint`, every token is one its grammar allows (the engine makes it from a response_format).
        """
        model, adapter = self.targets[name]
        sampling = _sampling(params, model.generation_config, model.device)
        row = _Row(list(prompt_ids), params.max_new_tokens or 1, adapter, sampling, constraint)
        with self._lock:
            self._groups[id(model)].waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=BATCHER_THREAD, daemon=True)
                self._thread.start()
        return self._read(row)

    def _read(self, row: _Row) -> Iterator[int]:
        try:
            while (item := row.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            row.cancelled = True  # closed early (stop string, client gone): it leaves the batch next step

    def _run(self) -> None:
        import torch

        while True:
            with self._lock:
                if self._closing or not any(g.rows or g.waiting for g in self._groups.values()):
                    # Idle: the thread ends (generate starts another), so no thread outlives the work it serves.
                    self._thread = None
                    return
                admitted = {}
                for key, group in self._groups.items():
                    room = self.max_batch_size - len(group.rows)
                    admitted[key], group.waiting = group.waiting[:room], group.waiting[room:]
            for key, group in self._groups.items():
                new = [row for row in admitted[key] if not row.cancelled]
                try:
                    with torch.inference_mode():
                        self._step(group, new)
                except Exception as exc:  # noqa: BLE001 -- every reader of this batch gets the error; the loop goes on
                    for row in group.rows + new:
                        row.out.put(exc)
                    group.rows, group.cache, group.mask = [], None, None

    def _step(self, group: _Group, new: list[_Row]) -> None:
        """Drop finished rows, prefill the new ones into the batch, then one decode step for all."""
        import torch

        self._keep(group, [i for i, row in enumerate(group.rows) if not row.cancelled])
        if new:
            ids, mask = _left_padded([row.prompt for row in new], group.model.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._forward(group, new, ids, mask, positions, None)
            self._join(group, new, getattr(out, group.cache_kwarg), mask)
            self._emit(group, new, out.logits[:, -1])
        if not group.rows:
            return
        ids = torch.tensor([[row.last] for row in group.rows], device=group.model.device)
        group.mask = torch.cat([group.mask, group.mask.new_ones(len(group.rows), 1)], dim=1)
        positions = group.mask.sum(-1, keepdim=True) - 1
        out = self._forward(group, group.rows, ids, group.mask, positions, group.cache)
        self._emit(group, group.rows, out.logits[:, -1])

    def _forward(self, group: _Group, rows: list[_Row], ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        extra = {"adapter_names": [row.adapter or "__base__" for row in rows]} if group.peft else {}
        with self._forward_lock:
            return group.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{group.cache_kwarg: cache},
                **extra,
            )

    def _emit(self, group: _Group, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token and hand it on; rows at eos or max tokens leave the batch."""
        logits = logits.float()
        if any(row.constraint is not None for row in rows):
            mask_logits([row.constraint for row in rows], logits)
        for row, token in zip(rows, _pick(rows, logits)):
            if row.constraint is not None:
                row.constraint.accept(token)
            row.last = token
            row.produced += 1
            row.out.put(row.last)
            if row.last in self.eos_ids or row.produced >= row.max_new_tokens:
                row.out.put(_END)
                row.cancelled = True
        self._keep(group, [i for i, row in enumerate(group.rows) if not row.cancelled])

    def _join(self, group: _Group, new: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append prefilled rows to the batch: both caches left-padded to one length, then stacked."""
        import torch

        if not group.rows:
            group.rows, group.cache, group.mask = list(new), cache, mask
            return
        length = max(group.mask.shape[1], mask.shape[1])
        for old, add in zip(group.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, length, 2), _pad_left(add.keys, length, 2)])
            old.values = torch.cat([_pad_left(old.values, length, 2), _pad_left(add.values, length, 2)])
        group.mask = torch.cat([_pad_left(group.mask, length, 1), _pad_left(mask, length, 1)])
        group.rows += new

    def _keep(self, group: _Group, keep: list[int]) -> None:
        """Keep only rows `keep`, and cut the padding columns no remaining row needs."""
        import torch

        if len(keep) == len(group.rows):
            return
        group.rows = [group.rows[i] for i in keep]
        if not keep:
            group.cache = group.mask = None
            return
        # On the CPU: under --device-map the cache's layers sit on several GPUs, and a CPU index selects on any.
        index = torch.tensor(keep)
        group.cache.batch_select_indices(index)
        group.mask = group.mask[index]
        unused = int((group.mask.sum(0) == 0).cumprod(0).sum())  # leading columns that are padding in every row
        if unused:
            group.mask = group.mask[:, unused:]
            for layer in group.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def score(self, pairs: list[tuple[list[int], list[int]]], name: str) -> list[list[float]]:
        """Log-probability of each continuation token after its prompt, for one batch of (prompt, continuation)."""
        import torch

        keep = max(len(c) for _, c in pairs) + 1  # left padding puts every continuation in the last columns
        logprobs = self._logprobs([p + c for p, c in pairs], name, keep)
        scores = []
        for row, (_, continuation) in enumerate(pairs):
            # Column keep-1-len(c)+j predicts continuation token j (the column after it holds that token).
            first = keep - 1 - len(continuation)
            index = torch.tensor(continuation, device=logprobs.device)[:, None]
            scores.append(logprobs[row, first : keep - 1].gather(-1, index)[:, 0].tolist())
        return scores

    def next_token(self, prompts: list[list[int]], candidates: list[int], name: str) -> list[list[float]]:
        """Log-probability of each candidate token right after each prompt, for one batch of prompts."""
        logprobs = self._logprobs(prompts, name, 1)
        return logprobs[:, 0, candidates].tolist()

    def _logprobs(self, sequences: list[list[int]], name: str, keep: int) -> torch.Tensor:
        """Next-token log-probabilities (float32) at the last `keep` positions of each left-padded sequence."""
        import torch

        model, adapter = self.targets[name]
        group = self._groups[id(model)]
        ids, mask = _left_padded(sequences, model.device)
        extra = {"adapter_names": [adapter or "__base__"] * len(sequences)} if group.peft else {}
        with torch.inference_mode(), self._forward_lock:
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
                logits_to_keep=keep,
                **extra,
            ).logits
            return logits.float().log_softmax(-1)


_BATCHERS: weakref.WeakSet[Batcher] = weakref.WeakSet()
BATCHER_THREAD = "tuneforge-batcher"
SWITCH_INTERVAL_S = 0.0005  # see Batcher.__init__


@atexit.register
def _stop_batchers() -> None:
    # A daemon thread still inside torch while the interpreter finalizes aborts the process ("terminate called
    # without an active exception"): each batcher finishes its step and stops first. A thread that has already left
    # _run may still hold the last reference to its batcher: Thread.run drops it afterwards, freeing the model's
    # tensors there, so every batcher thread is joined too, not only those a live batcher knows.
    for batcher in list(_BATCHERS):
        batcher.close()
    for thread in threading.enumerate():
        if thread.name == BATCHER_THREAD:
            thread.join(10)


def _left_padded(sequences: list[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to one length, and the attention mask (1 on real tokens)."""
    import torch

    length = max(len(s) for s in sequences)
    ids = torch.tensor([[PAD_ID] * (length - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros prepended along `dim` up to `length`."""
    import torch

    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@dataclass(frozen=True)
class _Sampling:
    """How a sampled row picks: its warper settings (rows that share them are warped together) and its generator."""

    warping: tuple[float, int | None, float | None]  # temperature, top-k, top-p
    generator: torch.Generator | None  # per request: a seeded row draws the same tokens in any batch


def _sampling(params: SamplingParams, config: GenerationConfig, device: Any) -> _Sampling | None:
    """How a row picks its tokens (None: greedy); unset values follow the model's generation config."""
    import torch

    temperature = params.temperature
    if temperature is None:
        temperature = (config.temperature or 1.0) if config.do_sample else 0.0
    # Below vLLM's sampling epsilon a temperature is greedy: dividing logits by 1e-45 overflows to inf and NaN.
    if temperature < GREEDY_BELOW:
        return None
    top_k = params.top_k if params.top_k is not None else config.top_k
    top_p = params.top_p if params.top_p is not None else config.top_p
    generator = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)
    return _Sampling((temperature, top_k, top_p), generator)


@functools.lru_cache(maxsize=64)
def _warpers(temperature: float, top_k: int | None, top_p: float | None) -> tuple[Callable[..., torch.Tensor], ...]:
    """transformers' logits warpers for one sampling setting (they work on a batch of rows at once)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1 else []
    warpers += [TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1 else []
    return tuple(warpers)


def _pick(rows: list[_Row], logits: torch.Tensor) -> list[int]:
    """Every row's next token from its logits (one row each): batched, not row by row.

    Greedy rows take one argmax over the whole batch; sampled rows are warped once per setting they share, then
    each seeded row draws with its own generator (unseeded ones draw together). Profiled on the tests' tiny Qwen3
    (docs/performance.md): a row-by-row argmax over the 151,936-token vocabulary was 11 % of a batch-8 step.
    """
    import torch

    groups: dict[tuple[float, int | None, float | None], list[int]] = {}
    for i, row in enumerate(rows):
        if row.sampling is not None:
            groups.setdefault(row.sampling.warping, []).append(i)
    greedy = sum(map(len, groups.values())) < len(rows)
    tokens = logits.argmax(-1).tolist() if greedy else [0] * len(rows)
    for warping, members in groups.items():
        scores = logits[members]
        for warp in _warpers(*warping):
            scores = warp(None, scores)
        probs = scores.softmax(-1)
        unseeded = [j for j, i in enumerate(members) if rows[i].sampling.generator is None]
        if unseeded:
            for j, token in zip(unseeded, torch.multinomial(probs[unseeded], 1)[:, 0].tolist()):
                tokens[members[j]] = token
        for j, i in enumerate(members):
            if (generator := rows[i].sampling.generator) is not None:
                tokens[i] = int(torch.multinomial(probs[j : j + 1], 1, generator=generator))
    return tokens


def batched(
    sizes: list[int], run: Callable[[list[int]], list[T]], max_batch_size: int, max_batch_tokens: int | None
) -> list[T]:
    """`run` over batches of item indices, similar sizes together; results in input order.

    A batch holds at most `max_batch_size` items and `max_batch_tokens` padded tokens (size of its largest item
    times its items; a single item always runs). On CUDA out-of-memory the batch is halved and retried.
    """
    import torch

    if max_batch_size < 1:
        raise UserError(f"max batch size must be at least 1 (got {max_batch_size})")
    batches: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # longest first: too big shows at once
        batch = batches[-1] if batches else []
        # Sorted descending, the batch's first item is its largest: padded size is that times the count.
        fits = batch and len(batch) < max_batch_size
        fits = fits and (max_batch_tokens is None or sizes[batch[0]] * (len(batch) + 1) <= max_batch_tokens)
        if fits:
            batch.append(i)
        else:
            batches.append([i])
    results: list[T | None] = [None] * len(sizes)
    todo = batches[::-1]
    while todo:
        batch = todo.pop()
        try:
            outputs = run(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            todo += [batch[len(batch) // 2 :], batch[: len(batch) // 2]]
            continue
        for i, output in zip(batch, outputs):
            results[i] = output
    return results  # type: ignore[return-value]
