"""The output folder: training set, eval split held out by chunk (and its suite), preview; all written atomically.

OUT/train.jsonl       the pairs of training chunks, in the chosen format, each with its provenance
OUT/eval.jsonl        the pairs of held-out chunks (messages format: the eval suite's generation task)
OUT/eval_suite.yaml   a suite `tuneforge eval --suite OUT/eval_suite.yaml` runs
OUT/preference.jsonl  preference pairs of training chunks (`preference:` set; messages_preference format)
OUT/preference_eval.jsonl  those of held-out chunks
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
from tuneforge.synth.client import Reply
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.pair import Pair


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
    if pair.variation is not None:
        found["variation"] = pair.variation.model_dump()
    if pair.synthesized is not None or any(t.synthesized is not None for t in pair.follow_ups):
        found["reasoning_synthesized"] = True
    if pair.judgement is not None:
        found["judge"] = {"model": cfg.quality.judge_model or cfg.model.name, **pair.judgement.model_dump()}
    return found


def _reasoning(reply: Reply, synthesized: str | None, cfg: SynthConfig) -> str | None:
    """A turn's reasoning as generate.reasoning says: the model's own, else the synthesized one; none with drop."""
    return None if cfg.generate.reasoning == "drop" else reply.reasoning or synthesized


def _assistant(text: str, reasoning: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def record(pair: Pair, layout: str, cfg: SynthConfig) -> dict[str, Any]:
    """One pair (with its follow-ups) as a training record in `layout` (messages keeps reasoning_content; the
    others inline <think>), with its tags and provenance."""
    assert pair.answer is not None
    turns = [(pair.question, pair.answer, pair.synthesized)]
    turns += [(t.question, t.answer, t.synthesized) for t in pair.follow_ups]
    messages: list[dict[str, Any]] = []
    for question, reply, synthesized in turns:
        reasoning = _reasoning(reply, synthesized, cfg)
        messages += [{"role": "user", "content": question}, _assistant(reply.content, reasoning)]
    extra: dict[str, Any] = {} if pair.tags is None else {"tags": pair.tags}
    extra["provenance"] = provenance(pair, cfg)
    if layout == "messages":
        return {"messages": messages, **extra}
    # alpaca / sharegpt have no reasoning field: the <think> block that formats.py splits off again.
    texts = [
        f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}" if "reasoning_content" in m else m["content"]
        for m in messages
    ]
    if layout == "alpaca":  # one turn only (the config refuses follow-ups with alpaca)
        return {"instruction": pair.question, "input": "", "output": texts[1], **extra}
    sides = ("human", "gpt")
    return {"conversations": [{"from": sides[i % 2], "value": t} for i, t in enumerate(texts)], **extra}


def preference_record(pair: Pair, cfg: SynthConfig) -> dict[str, Any]:
    """A written preference pair in the messages_preference format (`method.objective: dpo` reads it)."""
    choice = pair.preference
    assert choice is not None and choice.chosen is not None and choice.rejected is not None
    source = provenance(pair, cfg)
    source["preference"] = {"source": cfg.preference.source, "rejected_model": choice.rejected_model}  # type: ignore[union-attr]
    if choice.scores is not None:
        source["preference"]["scores"] = list(choice.scores)
    side = lambda reply: _assistant(reply.content, _reasoning(reply, None, cfg))  # noqa: E731
    found: dict[str, Any] = {
        "messages": [{"role": "user", "content": pair.question}],
        "chosen": side(choice.chosen),
        "rejected": side(choice.rejected),
    }
    if pair.tags is not None:
        found["tags"] = pair.tags
    return {**found, "provenance": source}


def write_outputs(out: Path, pairs: list[Pair], cfg: SynthConfig) -> dict[str, int]:
    """Write train.jsonl, eval.jsonl, eval_suite.yaml and preview.md; the count written to each split."""
    written = [p for p in pairs if p.fate == "written"]
    evals = [p for p in written if held_out(p.chunk.id, cfg.output.eval_fraction, cfg.output.seed)]
    trains = [p for p in written if p not in evals]
    _jsonl(out / "train.jsonl", [record(p, cfg.output.format, cfg) for p in trains])
    _jsonl(out / "eval.jsonl", [record(p, "messages", cfg) for p in evals])
    atomic_write_text(out / "eval_suite.yaml", yaml.safe_dump(eval_suite(cfg), sort_keys=False, allow_unicode=True))
    atomic_write_text(out / "preview.md", preview(trains[: cfg.output.preview]))
    if cfg.preference is not None:
        for name, group in (("preference.jsonl", trains), ("preference_eval.jsonl", evals)):
            chosen = [p for p in group if p.preference is not None and p.preference.fate == "written"]
            _jsonl(out / name, [preference_record(p, cfg) for p in chosen])
    return {"train": len(trains), "eval": len(evals)}


def eval_suite(cfg: SynthConfig) -> dict[str, Any]:
    """The suite for the held-out pairs: generation against the reference answers, and the judge's rubric."""
    tasks: list[dict[str, Any]] = [
        {"name": "synth-heldout", "type": "generation", "path": "eval.jsonl", "format": "messages"}
    ]
    if cfg.quality.judge and cfg.model.path is None:  # model.path's in-process server ends with the run
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


def train_snippet(out: Path, layout: str, preference: bool = False) -> str:
    """The `data:` section of a training config that reads this dataset as it is (with `preference`: the
    preference pairs, and the `method.objective: dpo` that trains on them)."""
    name, layout = ("preference.jsonl", "messages_preference") if preference else ("train.jsonl", layout)
    data: dict[str, Any] = {"data": {"datasets": [{"path": str(out / name), "format": layout}], "thinking": "auto"}}
    if preference:
        data["method"] = {"objective": "dpo"}
    return yaml.safe_dump(data, sort_keys=False)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
