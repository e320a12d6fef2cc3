"""`python -m tuneforge.webui.runner STATUS LOG -- COMMAND...`: one detached job of the web UI.

The runner is the only writer of STATUS (JSON, atomic): its pid and the command first, the exit status last, so a
restarted UI knows whether a job still runs, ended, or was lost (the runner was killed). SIGINT / SIGTERM sent to
the runner are passed on to the command (training saves a checkpoint and exits with 128 + the signal's number).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tuneforge.io import atomic_write_json


def main(argv: list[str]) -> int:
    """Run the command after `--`, recording its state in STATUS and its output in LOG; returns its exit status."""
    status_file, log_file = Path(argv[0]), Path(argv[1])
    command = argv[argv.index("--") + 1 :]
    status = {"pid": os.getpid(), "command": command, "started": time.time(), "state": "running"}
    with log_file.open("ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)
            status["stop_signal"] = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        atomic_write_json(status_file, {**status, "child": child.pid})
        code = child.wait()
    state = "finished" if code == 0 else ("stopped" if status.get("stop_signal") else "failed")
    atomic_write_json(status_file, {**status, "child": child.pid, "state": state, "exit_code": code,
                                    "ended": time.time()})  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
