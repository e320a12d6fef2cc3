"""Preference pairs from written pairs, for `method.objective: dpo` (messages_preference records).

weak_model: the chosen answer is the pair's own (model), the rejected one the weak model's answer to the same
request. rated: a second sample of the same request (another seed), both rated by the judge; the higher score is
chosen, a tie gives no pair (filtered, counted). Each preference pair has its own fate, counted in the report.
"""

from __future__ import annotations

from tuneforge.synth.client import Client, Failed
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.pair import Choice, Pair, answer, answer_prompt, judge
from tuneforge.synth.prompts import Templates

SECOND_SAMPLE_SEED = 1  # any fixed seed: the journal key has the step, the server sees another request


async def prefer(pair: Pair, cfg: SynthConfig, client: Client, templates: Templates) -> None:
    """Set `pair.preference`: a chosen / rejected pair, or the reason there is none."""
    assert pair.answer is not None and cfg.preference is not None
    messages = answer_prompt(pair, templates)
    try:
        weak = cfg.preference.weak
        if weak is not None:
            other = await answer(pair, messages, weak.name, client, "weak_answer", endpoint=weak.endpoint)
            pair.preference = Choice("written", chosen=pair.answer, rejected=other, rejected_model=weak.name)
            return
        other = await answer(pair, messages, cfg.model.name, client, "second_answer", seed=SECOND_SAMPLE_SEED)
        assert pair.judgement is not None  # rated needs the judge (config check), which rated the first answer
        first, second = pair.judgement.score, (await judge(pair, other.content, cfg, client, templates)).score
    except Failed as exc:
        pair.preference = Choice("failed", str(exc))
        return
    if first == second:
        pair.preference = Choice("filtered", "preference: tie (both answers rated the same)")
        return
    better, worse = (pair.answer, other) if first > second else (other, pair.answer)
    pair.preference = Choice(
        "written",
        chosen=better,
        rejected=worse,
        scores=(max(first, second), min(first, second)),
        rejected_model=cfg.model.name,
    )
