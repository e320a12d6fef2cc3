"""Inside one training process: its place among the others, the start-up agreement, node-first data work.

Every function here is a no-op for a lone process, so `train` runs the same code on 1, N or N×M processes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tuneforge.config import Config
from tuneforge.errors import UserError

if TYPE_CHECKING:
    from tuneforge.strategy import Strategy

# Processes start within seconds of each other; one that has not arrived by then has crashed.
STARTUP_TIMEOUT = timedelta(minutes=5)
# The first process of each node may tokenize a very large dataset while the others wait for its cache.
DATA_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, as the launcher (torchrun, accelerate) set it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by a launcher, even as its only process (DeepSpeed, FSDP need one)

    @classmethod
    def from_env(cls) -> Processes:
        """Read RANK, LOCAL_RANK and WORLD_SIZE (one process, not launched, when they are absent)."""
        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            launched="LOCAL_RANK" in env,
        )

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and logs."""
        return self.rank == 0


def init_processes(strategy: Strategy, procs: Processes) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) before anything else talks to the other processes."""
    import torch
    import torch.distributed as dist

    if not procs.launched or dist.is_initialized():
        return
    backend = strategy.backend(cuda=torch.cuda.is_available())
    if backend != "gloo":
        torch.cuda.set_device(procs.local_rank)
    timeout = timedelta(minutes=strategy.timeout_minutes)
    # accelerate, DeepSpeed and the Trainer all reuse this group rather than making their own.
    dist.init_process_group(backend, timeout=timeout)
    if backend == "gloo" and strategy.name == "deepspeed":
        # On CPU accelerate finds no backend for DeepSpeed and would count one process per rank;
        # naming gloo here and reusing this state (use_configured_state) gives it the real world size.
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo", timeout=timeout)


def _shared_settings(cfg: Config) -> Config:
    """The config every process must share: only the node's own rank may differ between nodes."""
    return cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"node_rank": 0})})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _first_difference(views: list[dict[str, Any]]) -> str:
    """'KEY is A on rank 0 (host) but B on rank R (host)' for the first process whose config differs."""
    first = views[0]
    rank, other = next((r, v) for r, v in enumerate(views) if v["fingerprint"] != first["fingerprint"])
    keys = sorted(
        k for k in first["config"].keys() | other["config"].keys() if first["config"].get(k) != other["config"].get(k)
    )
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return (
        f"{keys[0]} is {first['config'].get(keys[0])!r:.80} on rank 0 ({first['host']}) but "
        f"{other['config'].get(keys[0])!r:.80} on rank {rank} ({other['host']}){more}"
    )


def _gather(procs: Processes, mine: dict[str, Any], timeout: timedelta) -> list[dict[str, Any]]:
    import torch.distributed as dist

    # A gloo group of its own: its timeout is ours, whatever the training backend and its timeout are.
    group = dist.new_group(backend="gloo", timeout=timeout)
    views: list[Any] = [None] * procs.world_size
    dist.all_gather_object(views, mine, group=group)
    dist.destroy_process_group(group)
    return views


def agree(cfg: Config, procs: Processes, resume: str | None, problem: str | None) -> None:
    """Fail every process alike, on one line, if any found a problem or they differ in config or resume point."""
    shared = _shared_settings(cfg)
    mine = {
        "fingerprint": shared.fingerprint(),
        "config": _flatten(shared.model_dump(mode="json")),
        "resume": resume,
        "problem": problem,
        "host": socket.gethostname(),
    }
    views = _gather(procs, mine, STARTUP_TIMEOUT) if procs.distributed else [mine]
    problems = [v["problem"] for v in views if v["problem"]]
    if problems:
        raise UserError(problems[0])
    if len({v["fingerprint"] for v in views}) > 1:
        raise UserError(
            f"the processes disagree on the config: {_first_difference(views)}; start every node "
            "with the same config file and overrides (only --node-rank differs)"
        )
    if len({v["resume"] for v in views}) > 1:
        seen = ", ".join(f"rank {r} ({v['host']}) {v['resume'] or 'none'}" for r, v in enumerate(views))
        raise UserError(
            f"train.resume: the processes found different checkpoints ({seen}); resuming a "
            "multi-node run needs output.dir on storage that every node shares"
        )


@contextmanager
def node_first(procs: Processes) -> Iterator[None]:
    """Run the body on each node's first process, then on the others, which then find its caches."""
    if not procs.distributed:
        yield
        return
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=DATA_TIMEOUT)
    if procs.local_rank != 0:
        dist.barrier(group=group)
    yield
    if procs.local_rank == 0:
        dist.barrier(group=group)
    dist.destroy_process_group(group)
