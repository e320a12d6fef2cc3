"""The generation steps over all chunks: questions (per variation) → near-duplicate removal → grounded answers →
judge → synthesized reasoning → follow-ups → tags → preference pairs (enrich.py, preference.py).

Questions are asked of every chunk at once; each chunk's pairs, once the near-duplicate removal has seen the chunks
before it, go through their own steps, all pairs at once (the client bounds the requests in flight). Every
requested pair ends in exactly one fate: written, failed (a request or reply that gave nothing usable) or filtered
(a duplicate, a low judge score, ...), each with its reason, so the report adds up.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tuneforge.synth.chunk import Chunk
from tuneforge.synth.client import Client, Failed
from tuneforge.synth.config import SynthConfig, Variation
from tuneforge.synth.enrich import follow_ups, synthesize_reasoning, tag
from tuneforge.synth.pair import Pair, answer, answer_prompt, each, judge, prompt
from tuneforge.synth.preference import prefer
from tuneforge.synth.prompts import Questions, Templates


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
    gen = cfg.generate
    variations: list[Variation | None] = list(gen.variations) or [None]
    steps = [
        _answer,
        *([_judge] if cfg.quality.judge else []),
        *([synthesize_reasoning] if gen.reasoning == "synthesize" else []),
        *([follow_ups] if gen.follow_ups else []),
        *([tag] if gen.tags is not None else []),
    ]

    async def finish(pair: Pair) -> None:
        # One pair's steps in order, all pairs at once: a pair's judge does not wait for the slowest answer of the
        # others, so the request slots stay full up to the last pair (a round per step would end half empty).
        for step in steps:
            await step(pair, cfg, client, templates)
            if pair.fate != "pending":
                return
        pair.fate = "written"
        if cfg.preference is not None:
            await prefer(pair, cfg, client, templates)

    threshold = cfg.quality.dedup_threshold
    duplicates = NearDuplicates(threshold) if threshold is not None else None
    asked = [asyncio.ensure_future(_questions(c, n, v, cfg, client, templates)) for c, n in chunks for v in variations]
    pairs: list[Pair] = []
    finishing = []
    for questions in asked:
        # In chunk order, so that exactly the questions one pass over all of them would remove are removed; a
        # chunk's pairs start their steps as soon as the chunks before it are in, while later questions still run.
        group = await questions
        if duplicates is not None:
            duplicates.remove([p for p in group if p.fate == "pending"])
        pairs += group
        finishing.append(asyncio.ensure_future(each(group, finish)))
    await asyncio.gather(*finishing)
    return pairs


async def _questions(
    chunk: Chunk, count: int, variation: Variation | None, cfg: SynthConfig, client: Client, templates: Templates
) -> list[Pair]:
    pairs = [Pair(chunk, i, variation) for i in range(count)]
    if variation is None:
        messages = prompt(templates, "questions", pairs[0], count=str(count))
    else:
        fields = {"count": str(count), "genre": variation.genre, "audience": variation.audience}
        messages = prompt(templates, "questions_variation", pairs[0], **fields)
    for pair in pairs[1:]:
        pair.versions = dict(pairs[0].versions)
    try:
        reply, _ = await client.ask_json(chunk.id, "questions", cfg.model.name, messages, Questions)
    except Failed as exc:
        for pair in pairs:
            pair.fate, pair.reason = "failed", str(exc)
        return pairs
    asked = reply.questions  # type: ignore[attr-defined]
    for pair in pairs:
        if pair.index >= len(asked):
            pair.fate, pair.reason = "filtered", "questions: fewer questions than asked"
        elif not asked[pair.index].strip():
            pair.fate, pair.reason = "filtered", "questions: empty question"
        else:
            pair.question = asked[pair.index].strip()
    return pairs


async def _answer(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    pair.answer = await answer(pair, answer_prompt(pair, templates), cfg.model.name, client)


async def _judge(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    assert pair.answer is not None  # every pending pair was answered
    judgement = await judge(pair, pair.answer.content, cfg, client, templates)
    pair.judgement = judgement
    if not judgement.supported:
        pair.fate, pair.reason = "filtered", "judge: not supported by the chunk"
    elif judgement.score < cfg.quality.min_score:
        pair.fate, pair.reason = "filtered", f"judge: score below {cfg.quality.min_score}"


class NearDuplicates:
    """Marks as filtered every question nearly equal (MinHash Jaccard on character 3-grams) to one seen before, in
    the order of `remove` calls and of the pairs in each."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.index = MinHashLSH(threshold=threshold, num_perm=128)
        self.kept: dict[str, Any] = {}

    def remove(self, pairs: list[Pair]) -> None:
        """Filter the near-duplicates among `pairs` and of those kept before; remember the rest."""
        from datasketch import MinHash

        for pair in pairs:
            text = re.sub(r"[\W_]+", "", pair.question.lower())
            signature = MinHash(num_perm=128, seed=1)
            signature.update_batch([text[i : i + 3].encode() for i in range(max(1, len(text) - 2))])
            # LSH gives candidates; the estimate decides, so the threshold means what it says.
            if any(self.kept[k].jaccard(signature) >= self.threshold for k in self.index.query(signature)):
                pair.fate, pair.reason = "filtered", "near-duplicate question"
                continue
            key = str(len(self.kept))
            self.index.insert(key, signature)
            self.kept[key] = signature
