"""One requested question slot and what became of it, and the helpers every generation step shares.

A pair's fate (written, failed, filtered) is the report's accounting unit; a preference pair built from a
written pair has its own fate (`Choice`), counted in the report's `preference` section.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.synth.chunk import Chunk
from tuneforge.synth.client import Client, Failed, Reply
from tuneforge.synth.config import SynthConfig, Variation
from tuneforge.synth.prompts import Judgement, Templates, fill


@dataclass
class Turn:
    """A follow-up: the user's next question and the grounded answer to it."""

    question: str
    answer: Reply
    synthesized: str | None = None  # reasoning asked for afterwards (generate.reasoning: synthesize)


@dataclass
class Choice:
    """A preference pair built from a written pair: chosen and rejected answers, or why there is none."""

    fate: str  # written, failed, filtered
    reason: str = ""
    chosen: Reply | None = None
    rejected: Reply | None = None
    scores: tuple[int, int] | None = None  # (chosen, rejected) judge scores of a rated pair
    rejected_model: str = ""


@dataclass
class Pair:
    """One requested question slot of a chunk and what became of it."""

    chunk: Chunk
    index: int
    variation: Variation | None = None
    question: str = ""
    answer: Reply | None = None
    synthesized: str | None = None
    judgement: Judgement | None = None
    follow_ups: list[Turn] = field(default_factory=list)
    tags: list[str] | None = None
    preference: Choice | None = None
    fate: str = "pending"  # pending, written, failed, filtered
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # step → template version


async def each(pairs: list[Pair], step: Callable[[Pair], Awaitable[None]]) -> None:
    """Run `step` on every still-pending pair at once; a Failed marks that pair failed with its reason."""

    async def one(pair: Pair) -> None:
        try:
            await step(pair)
        except Failed as exc:
            pair.fate, pair.reason = "failed", str(exc)

    await asyncio.gather(*(one(p) for p in pairs if p.fate == "pending"))


def prompt(templates: Templates, step: str, pair: Pair, **fields: str) -> list[dict]:
    """The one user message of `step` for a pair's chunk (in its language); the template's version is recorded."""
    text, version = templates.get(step, pair.chunk.language)
    pair.versions[step] = version
    return [{"role": "user", "content": fill(text, chunk=pair.chunk.text, language=pair.chunk.language, **fields)}]


def answer_prompt(pair: Pair, templates: Templates) -> list[dict]:
    """The grounded answer request of a pair's first question."""
    return prompt(templates, "answer", pair, question=pair.question)


async def answer(
    pair: Pair, messages: list[dict], model: str, client: Client, step: str = "answer", **how: Any
) -> Reply:
    """A grounded answer (`how`: the client's endpoint / seed); Failed when cut off or empty."""
    reply = await client.ask(pair.chunk.id, step, model, messages, **how)
    if reply.finish_reason == "length":
        raise Failed(f"{step}: cut off at model.max_tokens")
    if not reply.content:
        raise Failed(f"{step}: empty")
    return reply


async def judge(pair: Pair, text: str, cfg: SynthConfig, client: Client, templates: Templates) -> Judgement:
    """The judge's rating of `text` as the answer to the pair's question."""
    messages = prompt(templates, "judge", pair, question=pair.question, answer=text)
    model = cfg.quality.judge_model or cfg.model.name
    judgement, _ = await client.ask_json(pair.chunk.id, "judge", model, messages, Judgement, temperature=0.0)
    return judgement  # type: ignore[return-value]
