"""The generation steps over all chunks: questions → near-duplicate removal → grounded answers → judge.

Each step runs over every item at once (the client bounds the requests in flight), and every requested pair
ends in exactly one fate: written, failed (a request or reply that gave nothing usable) or filtered (a
duplicate, a low judge score, ...), each with its reason, so the report adds up.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.synth.chunk import Chunk
from tuneforge.synth.client import Client, Failed, Reply
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.prompts import Judgement, Questions, Templates, fill


@dataclass
class Pair:
    """One requested question slot of a chunk and what became of it."""

    chunk: Chunk
    index: int
    question: str = ""
    answer: Reply | None = None
    judgement: Judgement | None = None
    fate: str = "pending"  # pending, written, failed, filtered
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # step → template version


def question_count(chunk: Chunk, cfg: SynthConfig, tokens: int) -> int:
    """Questions asked of a chunk: the fixed count, else one per tokens_per_question tokens (1..max_questions)."""
    gen = cfg.generate
    if gen.questions_per_chunk is not None:
        return gen.questions_per_chunk
    return max(1, min(gen.max_questions, tokens // gen.tokens_per_question))


async def generate(
    chunks: list[tuple[Chunk, int]], cfg: SynthConfig, client: Client, templates: Templates
) -> list[Pair]:
    """Every pair requested from `chunks` ((chunk, question count) each), each with its fate."""
    slots = await asyncio.gather(*(_questions(c, n, cfg, client, templates) for c, n in chunks))
    pairs = [pair for group in slots for pair in group]
    if cfg.quality.dedup_threshold is not None:
        remove_near_duplicates([p for p in pairs if p.fate == "pending"], cfg.quality.dedup_threshold)
    await _each(pairs, lambda p: _answer(p, cfg, client, templates))
    if cfg.quality.judge:
        await _each(pairs, lambda p: _judge(p, cfg, client, templates))
    for pair in pairs:
        if pair.fate == "pending":
            pair.fate = "written"
    return pairs


async def _each(pairs: list[Pair], step: Callable[[Pair], Awaitable[None]]) -> None:
    """Run `step` on every still-pending pair; a Failed marks that pair failed with its reason."""

    async def one(pair: Pair) -> None:
        try:
            await step(pair)
        except Failed as exc:
            pair.fate, pair.reason = "failed", str(exc)

    await asyncio.gather(*(one(p) for p in pairs if p.fate == "pending"))


def _prompt(templates: Templates, step: str, chunk: Chunk, pair_versions: dict[str, str], **fields: str) -> list[dict]:
    text, version = templates.get(step, chunk.language)
    pair_versions[step] = version
    return [{"role": "user", "content": fill(text, chunk=chunk.text, language=chunk.language, **fields)}]


async def _questions(chunk: Chunk, count: int, cfg: SynthConfig, client: Client, templates: Templates) -> list[Pair]:
    versions: dict[str, str] = {}
    messages = _prompt(templates, "questions", chunk, versions, count=str(count))
    pairs = [Pair(chunk, i, versions=versions) for i in range(count)]
    try:
        reply, _ = await client.ask_json(chunk.id, "questions", cfg.model.name, messages, Questions)
    except Failed as exc:
        for pair in pairs:
            pair.fate, pair.reason = "failed", str(exc)
        return pairs
    asked = reply.questions  # type: ignore[attr-defined]
    for pair in pairs:
        pair.versions = dict(versions)
        if pair.index >= len(asked):
            pair.fate, pair.reason = "filtered", "questions: fewer questions than asked"
        elif not asked[pair.index].strip():
            pair.fate, pair.reason = "filtered", "questions: empty question"
        else:
            pair.question = asked[pair.index].strip()
    return pairs


async def _answer(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    messages = _prompt(templates, "answer", pair.chunk, pair.versions, question=pair.question)
    reply = await client.ask(pair.chunk.id, "answer", cfg.model.name, messages)
    if reply.finish_reason == "length":
        raise Failed("answer: cut off at model.max_tokens")
    if not reply.content:
        raise Failed("answer: empty")
    pair.answer = reply


async def _judge(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    assert pair.answer is not None  # every pending pair was answered
    messages = _prompt(
        templates, "judge", pair.chunk, pair.versions, question=pair.question, answer=pair.answer.content
    )
    model = cfg.quality.judge_model or cfg.model.name
    judgement, _ = await client.ask_json(pair.chunk.id, "judge", model, messages, Judgement, temperature=0.0)
    pair.judgement = judgement  # type: ignore[assignment]
    if not judgement.supported:  # type: ignore[attr-defined]
        pair.fate, pair.reason = "filtered", "judge: not supported by the chunk"
    elif judgement.score < cfg.quality.min_score:  # type: ignore[attr-defined]
        pair.fate, pair.reason = "filtered", f"judge: score below {cfg.quality.min_score}"


def remove_near_duplicates(pairs: list[Pair], threshold: float) -> None:
    """Mark as filtered every question nearly equal (MinHash Jaccard on character 3-grams) to an earlier one."""
    from datasketch import MinHash, MinHashLSH

    index = MinHashLSH(threshold=threshold, num_perm=128)
    kept: dict[str, Any] = {}
    for n, pair in enumerate(pairs):
        text = re.sub(r"[\W_]+", "", pair.question.lower())
        signature = MinHash(num_perm=128, seed=1)
        signature.update_batch([text[i : i + 3].encode() for i in range(max(1, len(text) - 2))])
        # LSH gives candidates; the estimate decides, so the threshold means what it says.
        if any(kept[k].jaccard(signature) >= threshold for k in index.query(signature)):
            pair.fate, pair.reason = "filtered", "near-duplicate question"
            continue
        index.insert(str(n), signature)
        kept[str(n)] = signature
