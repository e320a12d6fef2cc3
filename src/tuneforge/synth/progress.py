"""OUT/progress.json of a synth run: its stage and request counts so far, for a watcher (the web UI's Data tab).

Rewritten atomically about once a second while requests run, as train/callbacks.py rewrites RUN/progress.json, so
a reader sees it whole or not at all. `requests_planned` is the count when nothing fails, is filtered before the
judge or needs a JSON retry; the final counts are report.json's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tuneforge.io import atomic_write_json
from tuneforge.synth.client import Meter

PERIOD_S = 1.0


class Progress:
    """The progress file of one synth run over `chunks` chunks asking `pairs` questions in all."""

    def __init__(self, path: Path, documents: int, chunks: int, pairs: int, judge: bool) -> None:
        self.path, self.started = path, time.time()
        self.planned = {"documents": documents, "chunks": chunks, "pairs_requested": pairs,
                        "requests_planned": chunks + pairs * (2 if judge else 1)}  # fmt: skip

    def write(self, stage: str, meter: Meter | None = None) -> None:
        """Record `stage` (generating, writing, done) with the meter's counts."""
        counts: dict[str, Any] = {}
        if meter is not None:
            counts = {"requests_done": meter.sent + meter.cached, "requests_sent": meter.sent,
                      "from_journal": meter.cached, "in_flight": meter.in_flight,
                      "tokens_in": meter.tokens_in, "tokens_out": meter.tokens_out}  # fmt: skip
        now = time.time()
        atomic_write_json(
            self.path,
            {"stage": stage, **self.planned, **counts, "elapsed_s": round(now - self.started, 1), "updated": now},
        )

    async def follow(self, meter: Meter) -> None:
        """Rewrite the file every PERIOD_S while generation runs (cancelled when it ends)."""
        while True:
            self.write("generating", meter)
            await asyncio.sleep(PERIOD_S)
