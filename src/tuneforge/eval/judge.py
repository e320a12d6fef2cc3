"""LLM judge: another model, behind any OpenAI-compatible endpoint, compares or rates the answers.

    - {name: judge, type: judge, path: prompts.jsonl, judge: {endpoint: http://host:8000, model: qwen3-32b}}

**pairwise** (default): the fine-tuned and the baseline answer to the same prompt are shown to the judge twice,
once in each order (position swap), and each time it ends with `[[A]]`, `[[B]]` or `[[C]]` (tie). The item is a
win or a loss when both orders agree, a tie when they tie or disagree (a judge that prefers a position cancels
out), and **unparsable** when either verdict cannot be read (no tag, or tags that contradict each other): those
are counted apart and left out of the win rate. An answer cut off inside its thinking is not judged
(thinking_truncated). Win rate = (wins + ties / 2) / (wins + ties + losses), with a 95 % Wilson score interval
(ties counted as half a win, so the interval is slightly conservative).

**rubric**: each model's answer alone gets a rating 1-10 (`[[7]]`) against the task's `rubric`; per model the
mean rating with a 95 % normal-approximation interval (mean ± 1.96 s/√n); unparsable ratings counted apart.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import TYPE_CHECKING, Any

from tuneforge.answers import TRUNCATED, split_answer
from tuneforge.errors import UserError
from tuneforge.eval.tasks import Context, Row, answered, conversations_of, generate_answers, limited, task_path
from tuneforge.infer.backend import SamplingParams

if TYPE_CHECKING:
    from tuneforge.data.conversation import Message
    from tuneforge.eval.suite import TaskConfig
    from tuneforge.infer.remote import RemoteEngine

WIN, LOSS, TIE, UNPARSABLE = "win", "loss", "tie", "unparsable"
RATED, ANSWERED = "rated", "answered"
Z95 = statistics.NormalDist().inv_cdf(0.975)  # 1.95996…
DEFAULT_RUBRIC = "helpfulness, correctness, relevance, depth and clarity"

PAIR_PROMPT = (
    "You are an impartial judge. Compare the two AI assistants' answers to the user's question below and decide "
    "which one answers it better: follows the instructions, is correct, helpful, relevant and clear. The order in "
    "which the answers are shown and their length must not influence you. Explain briefly, then give your verdict "
    'on the last line exactly as "[[A]]" if answer A is better, "[[B]]" if answer B is better, or "[[C]]" for a '
    "tie.\n\n[Question]\n{question}\n\n[Answer A]\n{a}\n[End of answer A]\n\n[Answer B]\n{b}\n[End of answer B]"
)
RUBRIC_PROMPT = (
    "You are an impartial judge. Rate the AI assistant's answer to the user's question below on a scale of 1 to "
    "10 against these criteria: {rubric}. Explain briefly, then give your rating on the last line exactly as "
    '"[[N]]", for example "[[7]]".\n\n[Question]\n{question}\n\n[Answer]\n{answer}\n[End of answer]'
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "C" (tie) from the judge's `[[X]]`; None without one, or with contradicting ones."""
    tags = set(_VERDICT.findall(text))
    return tags.pop() if len(tags) == 1 else None


def parse_rating(text: str) -> float | None:
    """The 1-10 rating in `[[N]]`; None without one, outside 1-10, or with contradicting ones."""
    ratings = {float(r) for r in _RATING.findall(text)}
    rating = ratings.pop() if len(ratings) == 1 else None
    return rating if rating is not None and 1 <= rating <= 10 else None


def combine(first: str | None, swapped: str | None) -> str:
    """One item's outcome for the fine-tuned model from its two verdicts (tuned shown as A, then as B)."""
    if first is None or swapped is None:
        return UNPARSABLE
    as_a = {"A": WIN, "B": LOSS, "C": TIE}[first]
    as_b = {"A": LOSS, "B": WIN, "C": TIE}[swapped]
    return as_a if as_a == as_b else TIE


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion successes / n (None for n = 0)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def aggregate(rows: list[Row]) -> dict[str, Any] | None:
    """Counts and confidence intervals of a judge task's rows (None for other tasks' rows)."""
    judged = [r for r in rows if isinstance(r.pred, dict) and ("verdict" in r.pred or "rating" in r.pred)]
    if not judged:
        return None
    if "verdict" in judged[0].pred:
        counts = {k: sum(r.outcome == k for r in judged) for k in (WIN, TIE, LOSS, UNPARSABLE, TRUNCATED)}
        n = counts[WIN] + counts[TIE] + counts[LOSS]
        ci = wilson(counts[WIN] + counts[TIE] / 2, n)
        text = f"W/T/L {counts[WIN]}/{counts[TIE]}/{counts[LOSS]}, unparsable {counts[UNPARSABLE]}"
        text += f"; 95% Wilson CI {ci[0]:.4f}-{ci[1]:.4f}" if ci else ""
        return {
            "mode": "pairwise",
            "metric": "win_rate",
            "counts": counts,
            "ci95": list(ci) if ci else None,
            "summary": text,
        }
    out: dict[str, Any] = {"mode": "rubric", "metric": "rating", "unparsable": {}, "ci95": {}}
    for role in dict.fromkeys(r.model for r in judged):
        ratings = [r.pred["rating"] for r in judged if r.model == role and r.pred["rating"] is not None]
        out["unparsable"][role] = sum(r.model == role and r.outcome == UNPARSABLE for r in judged)
        if len(ratings) > 1:
            half = Z95 * statistics.stdev(ratings) / math.sqrt(len(ratings))
            out["ci95"][role] = [statistics.fmean(ratings) - half, statistics.fmean(ratings) + half]
        else:
            out["ci95"][role] = None
    out["summary"] = "; ".join(
        f"{role}: unparsable {out['unparsable'][role]}"
        + (f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if (ci := out["ci95"][role]) else "")
        for role in out["unparsable"]
    )
    return out


def check_baseline(tasks: list[TaskConfig], has_baseline: bool) -> None:
    """Refuse pairwise judge tasks when there is no baseline to compare with (one line per task)."""
    pairwise = [t.name for t in tasks if t.type == "judge" and t.mode == "pairwise"]
    if pairwise and not has_baseline:
        raise UserError(
            "\n".join(
                f"task {name}: pairwise judging compares the fine-tuned model with a baseline; drop --baseline none "
                "(a --model without --adapter has none: pass --baseline RUN or URL), or set mode: rubric"
                for name in pairwise
            )
        )


def run_judge(task: TaskConfig, ctx: Context) -> list[Row]:
    """The models' answers to the task's prompts, judged pairwise (with position swap) or by rubric."""
    check_baseline([task], "baseline" in ctx.models)
    judge = _judge_engine(task)
    prompts = limited(_prompts(task, ctx), task, ctx)
    answers = generate_answers(task, ctx, prompts)
    rows = {
        role: [answered(task, str(i), role, prompt, result, None) for i, (prompt, result) in enumerate(pairs)]
        for role, pairs in answers.items()
    }
    params = SamplingParams(max_new_tokens=task.judge.max_tokens, temperature=0.0)

    def ask(texts: list[str]) -> list[str | None]:
        """The judge's answers (after its thinking); None where its thinking was cut off."""
        results = judge.generate_batch([[_user(t)] for t in texts], params, model=task.judge.model)
        split = [split_answer(r.content, r.reasoning, r.finish_reason) for r in results]
        return [None if s.truncated else s.answer for s in split]

    if task.mode == "pairwise":
        return _pairwise(prompts, rows, ask)
    return _rubric(prompts, rows, ask, task.rubric or DEFAULT_RUBRIC)


def _prompts(task: TaskConfig, ctx: Context) -> list[list[Message]]:
    """The prompts: `{"prompt": text}` records, or held-out data of any training format (its answers dropped)."""
    from tuneforge.data.sources import read_file

    records = [located.record for located in read_file(task_path(task, ctx))]
    if records and all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in records):
        return [[_user(r["prompt"])] for r in records]
    convs = conversations_of(task, ctx)
    return [c.messages[:-1] if c.messages[-1].role == "assistant" else c.messages for c in convs]


def _pairwise(prompts: list[list[Message]], rows: dict[str, list], ask: Any) -> list[Row]:
    tuned, baseline = rows["tuned"], rows["baseline"]
    judged = [i for i, ((_, t), (_, b)) in enumerate(zip(tuned, baseline)) if not (t.truncated or b.truncated)]
    texts = []
    for i in judged:
        question, t, b = _question(prompts[i]), tuned[i][1].answer, baseline[i][1].answer
        texts += [PAIR_PROMPT.format(question=question, a=t, b=b), PAIR_PROMPT.format(question=question, a=b, b=t)]
    judgements = ask(texts)
    for row, answer in baseline:
        row.outcome = TRUNCATED if answer.truncated else ANSWERED
    for row, _ in tuned:  # not judged unless below: one of the two answers ended inside its thinking
        row.pred, row.outcome = {"verdict": None, "verdicts": [None, None], "judgements": [None, None]}, TRUNCATED
    for k, i in enumerate(judged):
        row = tuned[i][0]
        first, swapped = judgements[2 * k], judgements[2 * k + 1]
        verdicts = [parse_verdict(j) if j is not None else None for j in (first, swapped)]
        row.outcome = combine(*verdicts)
        row.pred = {"verdict": row.outcome, "verdicts": verdicts, "judgements": [first, swapped]}
        if row.outcome != UNPARSABLE:
            row.score = {"win_rate": {WIN: 1.0, TIE: 0.5, LOSS: 0.0}[row.outcome]}
    return [row for role in ("baseline", "tuned") for row, _ in rows[role]]


def _rubric(prompts: list[list[Message]], rows: dict[str, list], ask: Any, rubric: str) -> list[Row]:
    flat = [(row, answer, prompts[int(row.id)]) for pairs in rows.values() for row, answer in pairs]
    judged = [(row, answer, prompt) for row, answer, prompt in flat if not answer.truncated]
    texts = [RUBRIC_PROMPT.format(rubric=rubric, question=_question(p), answer=a.answer) for _, a, p in judged]
    for row, _, _ in flat:
        row.pred, row.outcome = {"rating": None, "judgement": None}, TRUNCATED
    for (row, _, _), judgement in zip(judged, ask(texts)):
        rating = parse_rating(judgement) if judgement is not None else None
        row.pred = {"rating": rating, "judgement": judgement}
        row.outcome = UNPARSABLE if rating is None else RATED
        if rating is not None:
            row.score = {"rating": rating}
    return [row for row, _, _ in flat]


def _question(messages: list[Message]) -> str:
    """What the judge is shown as the question: the user's text, or the whole exchange for several turns."""
    if len(messages) == 1:
        return messages[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in messages)


def _user(text: str) -> Message:
    from tuneforge.data.conversation import Message

    return Message("user", text)


def check_judges(tasks: list[TaskConfig]) -> None:
    """Every judge task's settings and endpoint, before any model loads or any task runs (not hours into a suite)."""
    for task in tasks:
        if task.type == "judge":
            _judge_engine(task)


def _judge_engine(task: TaskConfig) -> RemoteEngine:
    """The judge's endpoint, checked (reachable, key accepted, model served) before any answer is generated."""
    from tuneforge.infer.remote import RemoteEngine, client_api_key

    judge = task.judge
    if judge is None or task.path is None:
        raise UserError(
            f"task {task.name}: a judge task needs path: (the prompts) and judge: {{endpoint: URL, model: NAME}}"
        )
    key = client_api_key(env=judge.api_key_env)
    engine = RemoteEngine(judge.endpoint, [judge.model], key, concurrency=judge.concurrency)
    try:
        engine.check()
    except UserError as exc:
        raise UserError(f"task {task.name}: judge {exc}") from None
    return engine
