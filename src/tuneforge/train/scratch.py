"""Where a process that cannot see rank 0's run folder writes the files it must write itself."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from tuneforge.rundir import Run


class DiscardCheckpoints(TrainerCallback):
    """Deletes this process's share of each checkpoint once saved (it cannot resume from it on its own)."""

    def on_save(self, args, state, control, **kwargs):
        # The whole folder: the share stays in its staging folder here, since only rank 0 publishes checkpoints.
        shutil.rmtree(args.output_dir, ignore_errors=True)


@contextmanager
def own_run_folder(run: Run) -> Iterator[tuple[Run, list[TrainerCallback]]]:
    """Where this process writes what it must write itself (random base, its share of checkpoints), and callbacks.

    That is the run folder, unless this process cannot see rank 0's run folder (another node without shared
    storage): then a scratch folder, removed at the end, whose checkpoint shares go after each save, so that
    only node 0 writes the run folder and nothing piles up elsewhere.
    """
    if run.config_file.is_file():
        yield run, []
        return
    scratch = Path(tempfile.mkdtemp(prefix="tuneforge-node-"))
    try:
        yield Run(scratch), [DiscardCheckpoints()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
