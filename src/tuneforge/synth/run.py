"""`tuneforge synth` end to end: documents → chunks → journaled generation → dataset, eval suite, report.

The journal is the only state: outputs are rebuilt from it on every run, so a run killed at any moment and run
again finishes the same dataset without sending a finished request again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.io import atomic_write_json
from tuneforge.synth.chunk import Chunk, chunk_document, token_counter
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.documents import convert, find_documents
from tuneforge.synth.generate import generate, question_count
from tuneforge.synth.journal import Journal
from tuneforge.synth.output import held_out, write_outputs
from tuneforge.synth.pair import Pair
from tuneforge.synth.progress import Progress
from tuneforge.synth.prompts import Templates


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' → (I, N), 0 ≤ I < N."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise UserError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """Whether a document belongs to this shard (a hash of its name, so adding files moves no others)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % shard[1] == shard[0]


def synth(cfg: SynthConfig, key: str, shard: tuple[int, int] = (0, 1), log: Callable[[str], Any] = print) -> dict:
    """Run the whole pipeline and return the report (also written to OUT/report.json); a model.path config must
    first be `served_at` its in-process server (commands/synth.py does)."""
    if cfg.model.endpoint is None:
        raise UserError(f"model.path {cfg.model.path}: not served; run it through `tuneforge synth`")
    started = time.monotonic()
    root = Path(cfg.docs).expanduser()
    if not root.exists():
        raise UserError(f"docs: {cfg.docs}: not found")
    out = Path(cfg.out).expanduser()
    target = out if shard[1] == 1 else out / "shards" / f"{shard[0]}-of-{shard[1]}"
    files = [f for f in find_documents(root) if in_shard(_name(f, root), shard)]
    if not files:
        raise UserError(f"docs: {cfg.docs}: no PDF, DOCX, PPTX, XLSX, CSV, HTML, Markdown or text files found")
    problems, chunks = _chunks(files, root, cfg)
    log(f"{len(files)} documents ({len(problems)} without text), {len(chunks)} chunks")
    journal = Journal(out / "journal", shard)
    pairs_requested = sum(n for _, n in chunks) * max(1, len(cfg.generate.variations))
    progress = Progress(target / "progress.json", len(files), len(chunks), pairs_requested, cfg)
    try:
        pairs, meter = asyncio.run(_generate(chunks, cfg, key, journal, progress))
    finally:
        journal.close()
    progress.write("writing", meter)
    split = write_outputs(target, pairs, cfg)
    report = _report(cfg, files, problems, chunks, pairs, meter, split, time.monotonic() - started)
    atomic_write_json(target / "report.json", report)
    progress.write("done", meter)
    return report


def _name(path: Path, root: Path) -> str:
    return path.name if root.is_file() else str(path.relative_to(root))


def _chunks(files: list[Path], root: Path, cfg: SynthConfig) -> tuple[list[dict], list[tuple[Chunk, int]]]:
    """Problems of unusable documents, and every chunk with its question count."""
    starts = token_counter(cfg.chunk)
    problems, chunks, seen = [], [], set()
    for path in files:
        doc = convert(path, _name(path, root))
        if doc.problem:
            problems.append({"file": doc.path, "problem": doc.problem})
            continue
        for chunk in chunk_document(doc, cfg.chunk, starts):
            if chunk.id not in seen:  # the same text twice in one file is asked about once
                seen.add(chunk.id)
                chunks.append((chunk, question_count(chunk, cfg, len(starts(chunk.text)))))
    return problems, chunks


async def _generate(chunks: list[tuple[Chunk, int]], cfg: SynthConfig, key: str, journal: Journal, progress: Progress):
    from tuneforge.synth.client import Client

    client = Client(cfg, key, journal)
    following = asyncio.ensure_future(progress.follow(client.meter))
    try:
        return await generate(chunks, cfg, client, Templates(dict(cfg.generate.prompts))), client.meter
    finally:
        following.cancel()
        await client.close()


def _report(cfg, files, problems, chunks, pairs: list[Pair], meter, split, elapsed: float) -> dict[str, Any]:
    requested, written = len(pairs), split["train"] + split["eval"]
    failed, filtered = _fates(pairs, written)
    budget, holdout = cfg.budget, (cfg.output.eval_fraction, cfg.output.seed)
    cost = None
    if budget.price_in is not None or budget.price_out is not None:
        cost = round((meter.tokens_in * (budget.price_in or 0) + meter.tokens_out * (budget.price_out or 0)) / 1e6, 6)
    return {
        "documents": {"found": len(files), "without_text": problems},
        "chunks": len(chunks),
        "eval_chunks": len({p.chunk.id for p in pairs if p.fate == "written" and held_out(p.chunk.id, *holdout)}),
        "requested": requested,
        "written": {**split, "total": written},
        "failed": failed,
        "filtered": filtered,
        "failure_rate": round(failed["total"] / requested, 6) if requested else 0.0,
        "preference": _preference_report(pairs) if cfg.preference is not None else None,
        "requests": {"sent": meter.sent, "from_journal": meter.cached, "sent_by_step": meter.by_step},
        "tokens": {"in": meter.tokens_in, "out": meter.tokens_out},
        "cost": cost,
        "concurrency": {
            "limit": cfg.model.concurrency,
            "mean_in_flight": round(meter.mean_in_flight, 2),
            "peak_in_flight": meter.peak,
        },
        "generation_s": round(meter.span, 3),
        "elapsed_s": round(elapsed, 2),
    }


def _fates(items: list[Any], written: int) -> tuple[dict, dict]:
    """(failed, filtered) of pairs or preference choices, each a total and counts by reason; `written` + both
    must add up to all of them (the identity the report promises: a miss is a bug, not a user error)."""
    found = {}
    for fate in ("failed", "filtered"):
        counts = Counter(item.reason for item in items if item.fate == fate)
        found[fate] = {"total": sum(counts.values()), "by_reason": dict(counts.most_common())}
    assert len(items) == written + found["failed"]["total"] + found["filtered"]["total"]
    return found["failed"], found["filtered"]


def _preference_report(pairs: list[Pair]) -> dict[str, Any]:
    """Preference pairs: one requested per written pair; written, failed (a request) or filtered (a tie)."""
    choices = [p.preference for p in pairs if p.fate == "written"]
    assert all(choices)  # every written pair was offered one
    written = sum(c.fate == "written" for c in choices)  # type: ignore[union-attr]
    failed, filtered = _fates(choices, written)
    return {"requested": len(choices), "written": written, "failed": failed, "filtered": filtered}
