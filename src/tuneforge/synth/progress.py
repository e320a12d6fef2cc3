"""OUT/progress.json of a synth run: its stage and request counts so far, for a watcher (the web UI's Data tab).

Rewritten atomically about once a second while requests run, as train/callbacks.py rewrites RUN/progress.json, so
a reader sees it whole or not at all. `requests_planned` is the count when nothing fails, is filtered before the
judge or needs a JSON retry (`planned_requests`); the final counts are report.json's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tuneforge.io import atomic_write_json
from tuneforge.synth.client import Meter
from tuneforge.synth.config import SynthConfig

PERIOD_S = 1.0


def planned_requests(cfg: SynthConfig, chunks: int, pairs: int) -> int:
    """Requests of a run where every step succeeds at once: a questions request per chunk and variation, then per
    pair its answer, judge, synthesized reasoning, follow-up turns, tags and preference pair as configured."""
    gen, preference = cfg.generate, cfg.preference
    reasoning = gen.reasoning == "synthesize"  # asked only where a reply has none: the upper count
    per_pair = 1 + cfg.quality.judge + reasoning + gen.follow_ups * (2 + reasoning) + (gen.tags is not None)
    if preference is not None:
        per_pair += 1 if preference.source == "weak_model" else 2  # the weak answer; or a second sample and its rating
    return chunks * max(1, len(gen.variations)) + pairs * per_pair


class Progress:
    """The progress file of one synth run over `chunks` chunks asking `pairs` questions in all."""

    def __init__(self, path: Path, documents: int, chunks: int, pairs: int, cfg: SynthConfig) -> None:
        self.path, self.started = path, time.time()
        self.planned = {"documents": documents, "chunks": chunks, "pairs_requested": pairs,
                        "requests_planned": planned_requests(cfg, chunks, pairs)}  # fmt: skip

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
