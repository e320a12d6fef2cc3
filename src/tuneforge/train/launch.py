"""`tuneforge train`: run in this process, or re-launch through torchrun on N processes and M nodes.

Under a launcher (torchrun, accelerate launch, or tuneforge's own re-launch) the same command trains as one
of the processes; checks that can fail run before anything starts, so errors come as one line, never a hang.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from tuneforge.config import Config, DistributedConfig, load_config
from tuneforge.errors import Interrupted, UserError
from tuneforge.strategy import Strategy
from tuneforge.train.distributed import Processes, agree, init_processes

# Node 0 of a multi-node run listens here unless told otherwise (torchrun's own default).
MULTI_NODE_PORT = 29500
# Seconds the workers get to save a checkpoint after a signal before torchrun kills them.
SIGNAL_GRACE_S = 300
# Seconds a worker node waits for node 0 to listen (it may start a little later) before it gives up in one line;
# torchrun itself would wait for its rendezvous timeout (minutes) and then fail with a traceback.
MASTER_WAIT_S = 60


def check_gpus(nproc: int) -> None:
    """On GPU machines, one process per visible GPU at most."""
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        count = torch.cuda.device_count()
        raise UserError(
            f"distributed.nproc: {nproc} processes but {count} GPU(s) visible{shown}; use --nproc {count} or fewer"
        )


def check_port(addr: str, port: int) -> None:
    """Node 0 must be able to listen on master_addr:master_port (checked before torchrun takes it)."""
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as sock:
        # TIME_WAIT leftovers of an earlier run do not block torchrun's store (it sets SO_REUSEADDR too).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"distributed.master_port: {addr}:{port} is already in use (another run?); "
                    "pick a free port with --master-port"
                ) from None
            raise UserError(
                f"distributed.master_addr: cannot listen on {addr}:{port} ({exc.strerror}); node 0 "
                "must own master_addr, give it this machine's address with --master-addr"
            ) from None


def check_master(addr: str, port: int, wait_s: float = MASTER_WAIT_S) -> None:
    """On a worker node: node 0's master_addr resolves and accepts connections on master_port within `wait_s`."""
    import time

    try:
        socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(
            f"distributed.master_addr: {addr} does not resolve ({exc.strerror}); "
            "give node 0's address with --master-addr"
        ) from None
    start = time.monotonic()
    while True:
        try:
            socket.create_connection((addr, port), timeout=5).close()
            return
        except OSError as exc:
            waited = time.monotonic() - start
            unreachable = exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
            if unreachable or waited + 1 > wait_s:
                reason = exc.strerror or type(exc).__name__
                raise UserError(
                    f"distributed.master_addr: node 0 did not answer at {addr}:{port} ({reason}; tried for "
                    f"{waited:.0f} s); check --master-addr and --master-port, and that node 0 has started"
                ) from None
        time.sleep(1)


def check_topology(dist: DistributedConfig) -> None:
    """Node rank within range; on node 0, a port torchrun can take; on the others, node 0 answering there."""
    if dist.node_rank >= dist.nnodes:
        raise UserError(
            f"distributed.node_rank: {dist.node_rank} with {dist.nnodes} node(s); ranks go from 0 to {dist.nnodes - 1}"
        )
    check_gpus(dist.nproc)
    if dist.node_rank == 0 and (dist.nnodes > 1 or dist.master_port is not None):
        check_port(dist.master_addr, dist.master_port or MULTI_NODE_PORT)
    elif dist.node_rank > 0:
        check_master(dist.master_addr, dist.master_port or MULTI_NODE_PORT)


def torchrun_args(config: Path, overrides: list[str], dist: DistributedConfig) -> list[str]:
    """The torchrun command line that runs `python -m tuneforge.train CONFIG OVERRIDES` on every process."""
    args = [
        f"--nproc-per-node={dist.nproc}",
        f"--nnodes={dist.nnodes}",
        f"--node-rank={dist.node_rank}",
        f"--master-addr={dist.master_addr}",
    ]
    if dist.nnodes > 1 or dist.master_port is not None:
        # Without a port torchrun picks any free one, which only works on a single node.
        args.append(f"--master-port={dist.master_port or MULTI_NODE_PORT}")
    return [*args, "-m", "tuneforge.train", str(config), *overrides]


def relaunch(config: Path, overrides: list[str], dist: DistributedConfig) -> int:
    """Run torchrun in this process; returns the exit status (the workers print their own errors)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would give each process one thread; share the cores out instead (tokenizing, CPU training).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.nproc)))
    # On Ctrl-C or SIGTERM torchrun passes the signal on, then kills the workers after this many seconds (its
    # default, 30, is shorter than saving a large model's checkpoint at the current step can take).
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SIGNAL_GRACE_S))
    # Its agent logs every worker exit and signal at length; failures are reported below, in one line.
    for name in [name for name in logging.root.manager.loggerDict if name.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(torchrun_args(config, overrides, dist)))
    except SignalException as exc:
        # The workers got the signal too: rank 0 printed where it saved and the command that resumes.
        return 128 + exc.sigval
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if codes <= {128 + signal.SIGINT, 128 + signal.SIGTERM}:  # the workers alone got a signal, and saved
            return max(codes)
        # 2: a UserError, printed by the workers on one line each; negative: stopped by torchrun after it.
        if 2 in codes and all(code == 2 or code < 0 for code in codes):
            return 2
        ranks = ", ".join(str(rank) for rank in sorted(exc.failures))
        raise UserError(f"training process(es) {ranks} failed (exit {sorted(codes)}); see their output above") from None
    return 0


def resume_command(config: Path, overrides: list[str]) -> str:
    """The command that continues this run from its newest checkpoint: the same config and overrides, resume=auto."""
    kept = [item for item in overrides if not item.startswith("train.resume=")]
    return shlex.join(["tuneforge", "train", str(config), *kept, "train.resume=auto"])


def train_command(config: Path, overrides: list[str], log: Callable[..., None]) -> int:
    """What `tuneforge train` does: train here, or re-launch on the configured processes; returns the exit status."""
    cfg = load_config(config, overrides)
    procs = Processes.from_env()
    dist = cfg.distributed
    strategy = Strategy.of(dist, procs.world_size if procs.launched else dist.nproc * dist.nnodes)
    strategy.check()
    if procs.launched:
        return _worker(cfg, strategy, config, overrides, log)
    if not strategy.needs_launcher:
        return _train(cfg, strategy, config, overrides, log)
    check_topology(dist)
    return relaunch(config, overrides, dist)


def _train(cfg: Config, strategy: Strategy, config: Path, overrides: list[str], log: Callable[..., None]) -> int:
    """Train in this process; a signal ends it with a checkpoint, the command that resumes it, and 128 + signal."""
    from tuneforge.train.run import train

    try:
        train(cfg, log=log, strategy=strategy)
    except Interrupted as stop:
        log(str(stop))
        log(f"resume with: {resume_command(config, overrides)}", soft_wrap=True)  # one line, to copy as it is
        return stop.status
    return 0


def _worker(cfg: Config, strategy: Strategy, config: Path, overrides: list[str], log: Callable[..., None]) -> int:
    """One of the processes a launcher started: check, join the others, train; only rank 0 logs."""
    check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    procs = Processes.from_env()
    # Compare configs before the slow imports of the training stack, so disagreeing nodes hear it in
    # seconds; `train` agrees again on what it finds in the run folder.
    init_processes(strategy, procs)
    agree(cfg, procs, resume=None, problem=None)
    return _train(cfg, strategy, config, overrides, log if procs.is_main else _quiet)


def _quiet(*_args: object, **_kwargs: object) -> None:
    """The log of processes other than rank 0: one copy of each message is enough."""
