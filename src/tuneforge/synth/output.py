"""The output folder: training set, eval split held out by chunk (and its suite), preview; all written atomically.

OUT/train.jsonl       the pairs of training chunks, in the chosen format, each with its provenance
OUT/eval.jsonl        the pairs of held-out chunks (messages format: the eval suite's generation task)
OUT/eval_suite.yaml   a suite `tuneforge eval --suite OUT/eval_suite.yaml` runs
OUT/preview.md        a few pairs to read
OUT/report.json       the accounting (run.py)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from tuneforge.io import atomic_write_text
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.generate import Pair


def held_out(chunk_id: str, fraction: float, seed: int) -> bool:
    """Whether a chunk belongs to the eval split (a seeded hash of its id: stable across runs and shards)."""
    digest = hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def provenance(pair: Pair, cfg: SynthConfig) -> dict[str, Any]:
    """Where a pair came from: file, page, section, chunk id and offsets, models, template versions, judgement."""
    chunk = pair.chunk
    found = {
        "file": chunk.doc,
        "page": chunk.page,
        "section": chunk.section,
        "chunk_id": chunk.id,
        "start": chunk.start,
        "end": chunk.end,
        "model": cfg.model.name,
        "templates": pair.versions,
    }
    if pair.judgement is not None:
        found["judge"] = {"model": cfg.quality.judge_model or cfg.model.name, **pair.judgement.model_dump()}
    return found


def record(pair: Pair, layout: str, cfg: SynthConfig) -> dict[str, Any]:
    """One pair as a training record in `layout` (messages keeps reasoning_content; the others inline <think>)."""
    assert pair.answer is not None
    answer, reasoning = pair.answer.content, pair.answer.reasoning
    source = provenance(pair, cfg)
    if layout == "messages":
        assistant: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning:
            assistant["reasoning_content"] = reasoning
        return {"messages": [{"role": "user", "content": pair.question}, assistant], "provenance": source}
    # alpaca / sharegpt have no reasoning field: the <think> block that formats.py splits off again.
    text = f"<think>\n{reasoning}\n</think>\n\n{answer}" if reasoning else answer
    if layout == "alpaca":
        return {"instruction": pair.question, "input": "", "output": text, "provenance": source}
    return {
        "conversations": [{"from": "human", "value": pair.question}, {"from": "gpt", "value": text}],
        "provenance": source,
    }


def write_outputs(out: Path, pairs: list[Pair], cfg: SynthConfig) -> dict[str, int]:
    """Write train.jsonl, eval.jsonl, eval_suite.yaml and preview.md; the count written to each split."""
    written = [p for p in pairs if p.fate == "written"]
    evals = [p for p in written if held_out(p.chunk.id, cfg.output.eval_fraction, cfg.output.seed)]
    trains = [p for p in written if p not in evals]
    _jsonl(out / "train.jsonl", [record(p, cfg.output.format, cfg) for p in trains])
    _jsonl(out / "eval.jsonl", [record(p, "messages", cfg) for p in evals])
    atomic_write_text(out / "eval_suite.yaml", yaml.safe_dump(eval_suite(cfg), sort_keys=False, allow_unicode=True))
    atomic_write_text(out / "preview.md", preview(trains[: cfg.output.preview]))
    return {"train": len(trains), "eval": len(evals)}


def eval_suite(cfg: SynthConfig) -> dict[str, Any]:
    """The suite for the held-out pairs: generation against the reference answers, and the judge's rubric."""
    tasks: list[dict[str, Any]] = [
        {"name": "synth-heldout", "type": "generation", "path": "eval.jsonl", "format": "messages"}
    ]
    if cfg.quality.judge:
        judge: dict[str, Any] = {"endpoint": cfg.model.endpoint, "model": cfg.quality.judge_model or cfg.model.name}
        if cfg.model.api_key_env:
            judge["api_key_env"] = cfg.model.api_key_env
        tasks.append(
            {"name": "synth-judge", "type": "judge", "path": "eval.jsonl", "format": "messages", "mode": "rubric"}
            | {"judge": judge}
        )
    return {"name": "synth", "tasks": tasks}


def preview(pairs: list[Pair]) -> str:
    """A few pairs as Markdown: question, reasoning, answer and where each came from."""
    parts = ["# Synth preview\n"]
    for pair in pairs:
        assert pair.answer is not None
        chunk = pair.chunk
        where = (
            f"{chunk.doc}"
            + (f", page {chunk.page}" if chunk.page else "")
            + (f", {chunk.section}" if chunk.section else "")
        )
        parts.append(f"## {pair.question}\n\n*{where} (chunk {chunk.id}, characters {chunk.start}-{chunk.end})*\n")
        if pair.answer.reasoning:
            parts.append("<details><summary>reasoning</summary>\n\n" + pair.answer.reasoning + "\n\n</details>\n")
        parts.append(pair.answer.content + "\n")
    return "\n".join(parts)


def train_snippet(out: Path, layout: str) -> str:
    """The `data:` section of a training config that reads this dataset as it is."""
    data = {"data": {"datasets": [{"path": str(out / "train.jsonl"), "format": layout}], "thinking": "auto"}}
    return yaml.safe_dump(data, sort_keys=False)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
