"""Held-out loss of a preference run: each validation pair scored by every model an eval compares, with the metrics the
run's TRL trainer logs on it (the objective's loss, rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies; a KTO answer: its reward alone, as its loss needs a batch's KL estimate).

Each answer is scored over its trained tokens given its prompt, rendered exactly as training rendered it
(data/render.py `render_preference`). dpo and kto measure rewards against a reference: here the eval's baseline, the
base model (TRL's reference for a new adapter; for a run that continued an adapter with method.adapter, TRL's
reference was that adapter as loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuneforge.data.conversation import Preference
from tuneforge.data.render import render_preference
from tuneforge.errors import UserError
from tuneforge.objective import Objective, Scored

# (served model name, [(prompt ids, answer ids)]) -> each answer token's log-probability
TokenLogprobs = Callable[[str, list[tuple[list[int], list[int]]]], list[list[float]]]


def preference_scores(
    samples: list[Preference],
    objective: Objective,
    method: Any,
    tokenizer: Any,
    thinking: str,
    models: dict[str, str],
    logprobs: TokenLogprobs,
) -> list[tuple[int, str, str, dict[str, float]]]:
    """(sample index, role, prompt text, metrics) for every sample and every model in `models` (role -> name);
    `objective` is one whose trainer logs rewards (its `reward` is set)."""
    if objective.reference and "baseline" not in models:
        raise UserError(
            f"eval: held-out {objective.name} rewards are measured against the reference model, the baseline; "
            "drop --baseline none"
        )
    rendered = [render_preference(sample, tokenizer, thinking) for sample in samples]
    # Each answer's trained tokens after its prompt (what follows the end-of-turn marker is the template's).
    answers = [
        (i, side, (r.prompt_ids, ids[:trained]))
        for i, r in enumerate(rendered)
        for side, ids, trained in (
            ("chosen", r.chosen_ids, r.chosen_trained),
            ("rejected", r.rejected_ids, r.rejected_trained),
        )
        if ids
    ]
    requests = [request for _, _, request in answers]
    sums = {role: [sum(lps) for lps in logprobs(name, requests)] for role, name in models.items()}
    out = []
    for role in models:
        scored: dict[int, dict[str, Scored]] = {}
        for (i, side, (_, ids)), logp, ref_logp in zip(answers, sums[role], sums.get("baseline", sums[role])):
            scored.setdefault(i, {})[side] = Scored(logp, ref_logp, len(ids))
        for i, by_side in scored.items():
            text = tokenizer.decode(rendered[i].prompt_ids)
            out.append((i, role, text, _metrics(objective, method, by_side)))
    return out


def _metrics(objective: Objective, method: Any, by_side: dict[str, Scored]) -> dict[str, float]:
    rewards = {side: objective.reward(method, answer) for side, answer in by_side.items()}
    metrics = {f"rewards/{side}": reward for side, reward in rewards.items()}
    if objective.pair_loss is not None and len(by_side) == 2:
        chosen, rejected = rewards["chosen"], rewards["rejected"]
        metrics["preference_loss"] = objective.pair_loss(method, by_side["chosen"], by_side["rejected"])
        metrics["rewards/margins"] = chosen - rejected
        metrics["rewards/accuracies"] = float(chosen > rejected)  # TRL counts a tie as lost
    return metrics
