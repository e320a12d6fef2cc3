"""What a judged pair gains before it is written: synthesized reasoning, follow-up turns, domain tags.

Every request goes through the client (journaled, counted); a step that gives nothing usable fails the pair with
the step's reason, so the report's identity (requested = written + failed + filtered) holds.
"""

from __future__ import annotations

from tuneforge.synth.client import Client, Failed, Reply
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.pair import Pair, Turn, answer, answer_prompt, prompt
from tuneforge.synth.prompts import FollowUp, Templates, tags_schema


async def reasoning_for(
    pair: Pair, question: str, reply: Reply, cfg: SynthConfig, client: Client, templates: Templates
) -> str | None:
    """The step-by-step reasoning from the chunk to `reply`, asked for when the model gave none (else None)."""
    if reply.reasoning:
        return None
    messages = prompt(templates, "reasoning", pair, question=question, answer=reply.content)
    # The reasoning is the reply's text; a reasoning model's own thinking about the task is not it.
    written = await answer(pair, messages, cfg.model.name, client, step="reasoning")
    return written.content


async def synthesize_reasoning(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    """generate.reasoning: synthesize: the first answer's reasoning when the model gave none."""
    assert pair.answer is not None
    pair.synthesized = await reasoning_for(pair, pair.question, pair.answer, cfg, client, templates)


async def follow_ups(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    """generate.follow_ups user turns, each asked by the model from the conversation so far and answered as the
    next turn of the first answer's request (so grounded in the same chunk)."""
    assert pair.answer is not None
    conversation = [*answer_prompt(pair, templates), {"role": "assistant", "content": pair.answer.content}]
    history = [(pair.question, pair.answer.content)]
    for _ in range(cfg.generate.follow_ups):
        shown = "\n".join(f"User: {q}\nAssistant: {a}" for q, a in history)
        messages = prompt(templates, "follow_up", pair, history=shown)
        asked, _ = await client.ask_json(pair.chunk.id, "follow_up", cfg.model.name, messages, FollowUp)
        question = asked.question.strip()  # type: ignore[attr-defined]
        conversation.append({"role": "user", "content": question})
        reply = await answer(pair, conversation, cfg.model.name, client)
        turn = Turn(question, reply)
        if cfg.generate.reasoning == "synthesize":
            turn.synthesized = await reasoning_for(pair, question, reply, cfg, client, templates)
        pair.follow_ups.append(turn)
        conversation.append({"role": "assistant", "content": reply.content})
        history.append((question, reply.content))


async def tag(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    """The pair's domain tags: from generate.tags (the reply schema allows only those), or free."""
    assert pair.answer is not None
    labels = None if cfg.generate.tags == "free" else cfg.generate.tags
    step = "free_tags" if labels is None else "tags"
    fields = {"question": pair.question, "answer": pair.answer.content, "tags": ", ".join(labels or [])}
    reply, _ = await client.ask_json(
        pair.chunk.id, step, cfg.model.name, prompt(templates, step, pair, **fields), tags_schema(labels)
    )
    found = list(dict.fromkeys(t.strip() for t in reply.tags if t.strip()))  # type: ignore[attr-defined]
    if not found:
        raise Failed(f"{step}: no tag")
    pair.tags = found
