"""Jobs the web UI launches (`tuneforge train|eval|export|synth` as detached processes) and the runs it finds again.

A job's state lives in its run folder (the layout is rundir.Run's), never in the UI process: RUN/jobs/KIND.json
(written by runner.py: pid, command, state, exit status), RUN/jobs/KIND.log (the command's output) and, for training,
RUN/jobs/train.yaml (the config the UI wrote). Closing the browser or restarting the UI leaves jobs running; a new
UI reads them back. Training's progress is RUN/progress.json, which the trainer rewrites at every step. A synth job's
folder is its output folder (OUT/jobs/synth.json, .log, .yaml; its progress OUT/progress.json: data_tab.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.rundir import Run

KINDS = ("train", "eval", "export", "synth")
_TAIL_BYTES = 64 * 1024
# Popen objects of the jobs this UI process started, polled so that ended runners do not linger as zombies.
_children: list[subprocess.Popen] = []
# metrics(): per metrics.jsonl, (inode, bytes read, entries); Gradio runs each open page's refresh in its own thread.
_metrics_read: dict[Path, tuple[int | None, int, list[dict[str, Any]]]] = {}
_metrics_lock = threading.Lock()


@dataclass(frozen=True)
class JobState:
    """A job as its status file tells it: running, finished, stopped, failed, lost (runner gone) or none."""

    kind: str
    state: str
    pid: int | None = None
    exit_code: int | None = None
    command: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """The job's process is alive."""
        return self.state == "running"


def _alive(pid: int) -> bool:
    """The runner `pid` still runs (a zombie or a recycled pid of another program does not count)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "tuneforge.webui.runner" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def job_state(run: Path, kind: str) -> JobState:
    """The state of the last `kind` job of `run`."""
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)
    path = Run(run).job_status(kind)
    if not path.is_file():
        return JobState(kind, "none")
    status = json.loads(path.read_text(encoding="utf-8"))
    state = status["state"]
    if state == "running" and not _alive(status["pid"]):
        state = "lost"  # the runner was killed (kill -9, a reboot) before it could record the end
    return JobState(kind, state, status["pid"], status.get("exit_code"), tuple(status["command"]))


def launch(run: Path, kind: str, args: list[str], wait: float = 60.0, env: dict[str, str] | None = None) -> JobState:
    """Start `tuneforge ARGS` for `run` as a detached job (`env` added to ours); refused while one of `kind` runs."""
    current = job_state(run, kind)
    if current.running:
        raise UserError(f"{run}: a {kind} job is running (pid {current.pid}); stop it first or wait for it to end")
    status, log = Run(run).job_status(kind), Run(run).job_log(kind)
    status.parent.mkdir(parents=True, exist_ok=True)
    status.unlink(missing_ok=True)
    log.write_text("", encoding="utf-8")  # a fresh log per job; the run's own files keep the history
    command = [sys.executable, "-m", "tuneforge.cli", *args]
    runner = [sys.executable, "-m", "tuneforge.webui.runner", str(status), str(log), "--", *command]
    # A session of its own: Ctrl-C on the UI's terminal, or the UI exiting, does not reach the job.
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(runner, start_new_session=True, stdin=subprocess.DEVNULL, env=environment)
    _children.append(process)
    deadline = time.monotonic() + wait
    while not status.is_file():  # the runner writes its pid before anything else
        if process.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"{kind}: the job did not start (runner exit status {process.poll()}); see {log}")
        time.sleep(0.05)
    return job_state(run, kind)


def stop(run: Path, kind: str = "train", sig: int = signal.SIGINT) -> JobState:
    """Ask a running job to stop (training saves a checkpoint first, as on Ctrl-C)."""
    current = job_state(run, kind)
    if not current.running:
        raise UserError(f"{run}: no {kind} job is running ({current.state})")
    os.kill(current.pid, sig)
    return current


def train_args(run: Path, resume: bool = False) -> list[str]:
    """The `tuneforge train` arguments of the run's UI-written config (with train.resume=auto to continue)."""
    config = Run(run).job_config
    if not config.is_file():
        raise UserError(f"{run}: no {config.relative_to(run)}; launch the run from the Train tab first")
    return ["train", str(config), *(["train.resume=auto"] if resume else [])]


def list_runs(runs_dir: Path) -> list[Path]:
    """Run folders under `runs_dir` (a config.yaml or UI jobs in them), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if Run(p).config_file.is_file() or Run(p).jobs.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def metrics(run: Path) -> list[dict[str, Any]]:
    """The entries of RUN/metrics.jsonl written so far (a line being appended is left for the next read).

    Each call reads only what was appended since the last one: the Watch tab asks every 2 s, and a long run's file
    grows to tens of thousands of lines. A file replaced (output.overwrite) or cut shorter is read again whole.
    """
    path = Run(run).metrics
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    with _metrics_lock:
        inode, offset, entries = _metrics_read.get(path, (None, 0, []))
        if inode != stat.st_ino or stat.st_size < offset:
            offset, entries = 0, []
        added = []
        with path.open("rb") as f:
            f.seek(offset)
            for line in f.read(stat.st_size - offset).splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # being appended: left for the next read
                try:
                    added.append(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break  # torn; train's own reader (callbacks.logged_lines) stops at it the same way
                offset += len(line)
        entries = entries + added if added else entries  # a new list: a caller may still hold the old one
        _metrics_read[path] = (stat.st_ino, offset, entries)
        return entries


def log_tail(run: Path, kind: str, lines: int = 40) -> str:
    """The last `lines` lines of a job's log as a terminal shows them (a progress bar's redraws collapsed)."""
    path = Run(run).job_log(kind)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        text = f.read().decode("utf-8", errors="replace")
    shown = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]
    return "\n".join(shown[-lines:])


def progress(run: Path) -> dict[str, Any] | None:
    """RUN/progress.json as the trainer last wrote it (step, max_steps, elapsed_s, eta_s), or None before it does."""
    try:
        return json.loads(Run(run).progress.read_text(encoding="utf-8"))  # written atomically: whole or absent
    except FileNotFoundError:
        return None
