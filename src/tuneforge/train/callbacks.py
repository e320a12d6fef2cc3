"""Trainer callbacks: metrics.jsonl, a progress bar with loss, tokens/s and ETA, and the loss plot."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from transformers import TrainerCallback

from tuneforge.errors import UserError
from tuneforge.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from tuneforge.rundir import Run


class MetricsCallback(TrainerCallback):
    """Appends every log entry to RUN/metrics.jsonl (rank 0); on resume, drops entries after the checkpoint.

    It also rewrites RUN/progress.json at every step: step, total, elapsed and ETA as numbers, what a watcher (the
    web UI) shows as a progress bar without reading the terminal's bar.
    """

    def __init__(self, run: Run, resume: str | None) -> None:
        self.run = run
        self.resume = resume
        self.started = (0.0, 0)  # (time, step) this process started training at: the ETA's pace is measured from it

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started = (time.time(), state.global_step)
        self._progress(state)
        if not self.resume:
            self.run.metrics.unlink(missing_ok=True)
        elif self.run.metrics.exists():
            # Steps logged after the checkpoint by the interrupted run are about to be run again.
            step = int(self.resume.rstrip("/").split("-")[-1])
            kept = [line for line in logged_lines(self.run) if json.loads(line)["step"] <= step]
            atomic_write_text(self.run.metrics, "".join(line + "\n" for line in kept))

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._progress(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            entry = {"step": state.global_step, "epoch": state.epoch, **logs, "memory_gib": _memory_gib()}
            with self.run.metrics.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _progress(self, state) -> None:
        start_time, start_step = self.started
        now, done = time.time(), state.global_step - start_step
        eta = (now - start_time) / done * (state.max_steps - state.global_step) if done else None
        atomic_write_json(
            self.run.progress,
            {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
             "elapsed_s": round(now - start_time, 1), "eta_s": None if eta is None else round(eta, 1),
             "updated": now},
        )  # fmt: skip


def _memory_gib() -> float:
    """Peak GPU memory allocated on this device so far, or the process's resident memory on CPU (web UI plot)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(psutil.Process().memory_info().rss / 2**30, 3)


class StopOnSignal(TrainerCallback):
    """SIGINT / SIGTERM: finish the current step, save a checkpoint there and stop (every process at the same step).

    Only the first signal counts: torchrun forwards the one it received to processes that may have had it
    from the terminal too. Within `installed()` the signals set a flag; outside, they act as usual.
    """

    def __init__(self, log: Callable[..., None]) -> None:
        self.log = log
        self.received: int | None = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Catch SIGINT and SIGTERM for the duration (the main thread only may set handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._receive) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _receive(self, signum: int, _frame: object) -> None:
        # Only a flag: printing here could re-enter a write the signal interrupted.
        if self.received is None:
            self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        self.received = self._agreed(args)
        if self.received:
            name = signal.Signals(self.received).name
            self.log(f"{name}: saving a checkpoint at step {state.global_step}, then stopping")
            control.should_save = True
            control.should_training_stop = True

    def _agreed(self, args) -> int | None:
        """The signal any process received: all must stop after the same step, or the checkpoint's save deadlocks."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received
        flag = torch.tensor([self.received or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


def logged_lines(run: Run) -> list[str]:
    """The lines of RUN/metrics.jsonl; a torn last line (the run was killed while appending it) is dropped."""
    lines = run.metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return lines[:-1]
            raise UserError(
                f"{run.metrics}:{number}: not a JSON line; delete that line, or the file to start the log afresh"
            ) from None
    return lines


PREFERENCE_BAR = {"rewards/accuracies": "acc", "rewards/margins": "margin", "reward": "reward"}  # reward: grpo
# The preference metrics TRL logs, drawn in RUN/rewards.png (as present).
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class ProgressBarCallback(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest loss, tokens/s and the ETA."""

    def __init__(self) -> None:
        self.bar = None
        self.start_tokens = 0
        self.start_time = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")
            self.start_tokens, self.start_time = state.num_input_tokens_seen, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            elapsed = max(time.perf_counter() - self.start_time, 1e-9)
            rate = (state.num_input_tokens_seen - self.start_tokens) / elapsed
            # Preference objectives also show how often, and by how much, the chosen answer wins (TRL's names).
            rewards = {short: f"{logs[key]:.3f}" for key, short in PREFERENCE_BAR.items() if key in logs}
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", **rewards, tok_s=f"{rate:.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def plot_loss(run: Run) -> None:
    """Draw RUN/loss.png from RUN/metrics.jsonl (train and validation loss against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [json.loads(line) for line in logged_lines(run)] if run.metrics.exists() else []
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        points = [(e["step"], e[key]) for e in entries if key in e]
        if points:
            ax.plot(*zip(*points), label=label, marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.root.name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run shorter than logging_steps has nothing to label yet
        ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(run.loss_plot, png.getvalue())


def plot_rewards(run: Run) -> None:
    """Draw RUN/rewards.png from the preference metrics in RUN/metrics.jsonl (chosen, rejected, margin, accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [json.loads(line) for line in logged_lines(run)] if run.metrics.exists() else []
    fig, (rewards, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    for key in REWARD_KEYS:
        points = [(e["step"], e[key]) for e in entries if key in e]
        axis = accuracy if key.endswith("accuracies") else rewards
        if points:
            axis.plot(*zip(*points), label=key.split("/")[1], marker="." if len(points) < 50 else None)
    for axis, label in ((rewards, "reward"), (accuracy, "reward accuracy")):
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.suptitle(run.root.name)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(run.rewards_plot, png.getvalue())
