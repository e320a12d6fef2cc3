"""The task runners: each turns a task entry into sample rows for every model evaluated (baseline, tuned).

Every model sees the same prompts with the same decoding; generation for all models goes through one
`generate_batch` call (a LoRA run's base and adapter share one loaded model, switched per row).

A row is one item for one model, as samples.jsonl stores it. `score` holds the item's metrics and `weight`
its weight in the task's mean (tokens for held-out loss, 1 elsewhere); rows whose thinking was cut off at
max tokens carry no score (outcome "thinking_truncated").
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.answers import (
    CORRECT,
    TRUNCATED,
    extract_choice,
    gsm8k_gold,
    math_equal,
    outcome,
    split_answer,
)
from tuneforge.data.conversation import Conversation, Message, Preference, ToolCall
from tuneforge.errors import UserError
from tuneforge.eval import metrics
from tuneforge.eval.suite import TaskConfig
from tuneforge.infer.backend import ChatResult, SamplingParams
from tuneforge.infer.cache import ItemCache
from tuneforge.objective import SFT, Objective

if TYPE_CHECKING:
    from tuneforge.config import Config
    from tuneforge.infer.backend import ChatBackend

LETTERS = "ABCD"
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Context:
    """What every task needs: the backend, which served name plays which role, and the run's settings."""

    engine: ChatBackend
    models: dict[str, str]  # role (baseline / tuned) -> served model name
    think: bool | None  # enable_thinking for generation (None: the template's default)
    base_dir: Path  # relative task paths are read from here
    run_config: Config | None = None
    limit: int | None = None  # --limit: overrides each task's own
    cache: ItemCache = field(default_factory=lambda: ItemCache(None, {}))  # finished items (infer/cache.py)


@dataclass
class Row:
    """One item answered by one model (a line of samples.jsonl)."""

    task: str
    id: str
    model: str
    prompt: str
    gold: Any
    output: str = ""
    reasoning: str | None = None
    pred: Any = None
    outcome: str = "scored"
    score: dict[str, float] = field(default_factory=dict)
    weight: float = 1.0
    choices: list[str] | None = None
    subject: str | None = None


def limited(items: list, task: TaskConfig, ctx: Context) -> list:
    limit = ctx.limit or task.limit
    return items[:limit] if limit else items


def task_path(task: TaskConfig, ctx: Context) -> Path:
    if task.path is None:
        raise UserError(f"task {task.name}: set path: to its data file or folder")
    path = ctx.base_dir / task.path
    if not path.exists():
        raise UserError(f"task {task.name}: {path} not found; fix path: in the suite or pass --data-dir DIR")
    return path


def conversations_of(task: TaskConfig, ctx: Context, objective: Objective = SFT) -> list[Conversation | Preference]:
    from tuneforge.config import DatasetConfig
    from tuneforge.data.sources import load_conversations

    dataset = DatasetConfig(path=str(task_path(task, ctx)), format=task.format, placeholders=_placeholders(task, ctx))
    return load_conversations(dataset, log=lambda *_: None, objective=objective)


def _placeholders(task: TaskConfig, ctx: Context) -> dict[str, str]:
    """The task's placeholders, else the run's (first dataset that has them), keys in lower case."""
    if task.placeholders:
        return {k.lower(): v for k, v in task.placeholders.items()}
    datasets = ctx.run_config.data.datasets if ctx.run_config else []
    found = next((ds.placeholders for ds in datasets if ds.placeholders), {})
    return {k.lower(): v for k, v in found.items()}


# --- held-out loss ---------------------------------------------------------------------------------------------


def _token_logprobs(ctx: Context, name: str, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Each continuation token's log-probability under model `name`, given its prefix (cached per item)."""
    return ctx.cache.map(
        "token_logprobs",
        [(name, {"ids": pair}) for pair in pairs],
        lambda todo: ctx.engine.score_ids([pairs[i] for i in todo], model=name),
    )


def _loss(task: TaskConfig, ctx: Context) -> list[Row]:
    """Token-level loss on held-out conversations, rendered and masked exactly as training does (no generation); a
    preference run's held-out pairs get its objective's loss and rewards instead (eval/preference.py)."""
    from tuneforge.data.render import IGNORE, render
    from tuneforge.data.sources import build_conversations

    data = ctx.run_config.data if ctx.run_config else None
    objective = Objective.of(ctx.run_config.method) if ctx.run_config else SFT
    if task.path is not None:
        convs = conversations_of(task, ctx, objective)
    elif data is not None and data.val_size > 0:
        convs = build_conversations(data, log=lambda *_: None, objective=objective)[1]
    else:
        raise UserError(
            f"task {task.name}: no held-out data: the run has no validation split (data.val_size); set path: "
            "to a data file in the suite"
        )
    thinking, train_on = (data.thinking, data.train_on) if data else ("auto", "all_turns")
    if objective.reward is not None:
        return _preference_loss(task, ctx, limited(convs, task, ctx), objective, thinking)
    rendered = [render(conv, ctx.engine.tokenizer, thinking, train_on) for conv in limited(convs, task, ctx)]
    rendered = [r for r in rendered if any(label != IGNORE for label in r.labels[1:])]
    pairs = [(r.input_ids[:1], r.input_ids[1:]) for r in rendered]
    rows = []
    for role, name in ctx.models.items():
        scores = _token_logprobs(ctx, name, pairs)
        for i, (r, logprobs) in enumerate(zip(rendered, scores)):
            trained = [lp for lp, label in zip(logprobs, r.labels[1:]) if label != IGNORE]
            loss = -sum(trained) / len(trained)
            row = Row(task.name, str(i), role, r.text, None, score={"loss": loss}, weight=len(trained))
            rows.append(row)
    return rows


def _preference_loss(
    task: TaskConfig, ctx: Context, samples: list[Preference], objective: Objective, thinking: str
) -> list[Row]:
    from tuneforge.eval.preference import preference_scores

    method = ctx.run_config.method  # a preference objective comes from a run's config
    logprobs = partial(_token_logprobs, ctx)
    scores = preference_scores(samples, objective, method, ctx.engine.tokenizer, thinking, ctx.models, logprobs)
    return [Row(task.name, str(i), role, text, None, score=score) for i, role, text, score in scores]


def perplexity(loss: float) -> float:
    """exp(loss), the perplexity of a mean token loss."""
    return math.exp(loss)


# --- generation-based tasks --------------------------------------------------------------------------------------


def generate_answers(
    task: TaskConfig, ctx: Context, prompts: list[list[Message]]
) -> dict[str, list[tuple[str, ChatResult]]]:
    """Greedy answers of every model to the same prompts, in one batched call: {role: [(rendered prompt, result)]}."""
    params = SamplingParams(max_new_tokens=task.max_new_tokens, temperature=0.0)
    roles = list(ctx.models)
    convs = [p for _ in roles for p in prompts]
    names = [ctx.models[role] for role in roles for _ in prompts]
    rendered = [ctx.engine.render(p, enable_thinking=ctx.think) for p in prompts]
    decoding = asdict(params)
    requests = [{"prompt": text, "decoding": decoding} for _ in roles for text in rendered]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        results = ctx.engine.generate_batch(
            [convs[i] for i in todo], params, model=[names[i] for i in todo], enable_thinking=ctx.think
        )
        return [asdict(result) for result in results]

    values = ctx.cache.map("generate", list(zip(names, requests)), compute)
    results = [_chat_result(value) for value in values]
    return {
        role: list(zip(rendered, results[k * len(prompts) : (k + 1) * len(prompts)])) for k, role in enumerate(roles)
    }


def _chat_result(value: dict[str, Any]) -> ChatResult:
    """A ChatResult from its cached dict."""
    return ChatResult(**{**value, "tool_calls": [ToolCall(**call) for call in value["tool_calls"]]})


def answered(task: TaskConfig, item_id: str, role: str, prompt: str, result: ChatResult, gold: Any) -> tuple:
    """A row with the output split at the thinking, and its answer text."""
    answer = split_answer(result.content, result.reasoning, result.finish_reason)
    row = Row(task.name, item_id, role, prompt, gold, output=result.content, reasoning=answer.reasoning)
    return row, answer


def _graded(rows_answers: list[tuple[Row, Any]], grade: Callable[[Row, str], tuple[bool, Any]]) -> list[Row]:
    """Rows with pred, outcome and accuracy filled in by `grade(row, answer) -> (correct, pred)`."""
    rows = []
    for row, answer in rows_answers:
        correct, row.pred = grade(row, answer.answer)
        row.outcome = outcome(answer, correct)
        row.score = {} if row.outcome == TRUNCATED else {"accuracy": float(row.outcome == CORRECT)}
        rows.append(row)
    return rows


def _probe(task: TaskConfig, ctx: Context) -> list[Row]:
    """Self-cognition: does the answer name the configured name (or author)?"""
    values = _placeholders(task, ctx)
    items = [(kind, q) for kind, questions in task.questions.items() for q in questions]
    missing = sorted({kind for kind, _ in items if not values.get(kind)})
    if missing:
        raise UserError(
            f"task {task.name}: no {' / '.join(missing)} to expect; set placeholders: {{name: ..., author: ...}} "
            "on the task, or train with data placeholders"
        )
    items = limited(items, task, ctx)
    answers = generate_answers(task, ctx, [[Message("user", q)] for _, q in items])
    rows = [
        answered(task, str(i), role, prompt, result, values[kind])
        for role, pairs in answers.items()
        for i, ((kind, _), (prompt, result)) in enumerate(zip(items, pairs))
    ]
    return _graded(rows, lambda row, answer: (bool(metrics.contains(answer, row.gold)), answer))


def _generation(task: TaskConfig, ctx: Context) -> list[Row]:
    """Held-out prompts of any training format: the last assistant turn is the reference."""
    convs = [c for c in conversations_of(task, ctx) if c.messages[-1].role == "assistant"]
    convs = limited(convs, task, ctx)
    answers = generate_answers(task, ctx, [c.messages[:-1] for c in convs])
    rows = []
    for role, pairs in answers.items():
        for i, (conv, (prompt, result)) in enumerate(zip(convs, pairs)):
            row, answer = answered(task, str(i), role, prompt, result, conv.messages[-1].content)
            row.pred, row.outcome = answer.answer, TRUNCATED if answer.truncated else "scored"
            if not answer.truncated:
                row.score = {
                    name: fn(answer.answer, row.gold)
                    for name, fn in (
                        ("exact_match", metrics.exact_match),
                        ("contains", metrics.contains),
                        ("rouge_l", metrics.rouge_l),
                        ("bleu4", metrics.bleu4),
                    )
                }
            rows.append(row)
    return rows


def _math(task: TaskConfig, ctx: Context) -> list[Row]:
    """GSM8K (`#### N`) or MATH (`answer`, `\\boxed{}` solutions) by generation; equivalence by math-verify."""
    from tuneforge.data.sources import read_file

    items = []
    for located in limited(list(read_file(task_path(task, ctx))), task, ctx):
        record = located.record
        if "problem" in record:  # MATH / MATH-500
            items.append((str(record.get("unique_id", len(items))), record["problem"], record["answer"]))
        elif "question" in record:  # GSM8K
            items.append((str(len(items)), record["question"], gsm8k_gold(record["answer"])))
        else:
            raise UserError(f"{located.where}: expected GSM8K (question, answer) or MATH (problem, answer) fields")
    answers = generate_answers(task, ctx, [[Message("user", f"{q}\n{MATH_INSTRUCTION}")] for _, q, _ in items])
    rows = [
        answered(task, item_id, role, prompt, result, gold)
        for role, pairs in answers.items()
        for (item_id, _, gold), (prompt, result) in zip(items, pairs)
    ]
    return _graded(rows, lambda row, answer: math_equal(answer, row.gold))


# --- multiple choice ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: subject, text, four choices, the right letter."""

    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: str


def _read_csv(path: Path, layout: str) -> tuple[str, list[Question]]:
    """A subject's questions from one CSV file in the CMMLU, C-Eval or MMLU layout (header row)."""
    subject = path.stem
    for suffix in ("_test", "_dev", "_val"):
        subject = subject.removesuffix(suffix)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return layout, []
    columns = set(rows[0])
    if layout == "auto":
        layout = "mmlu" if "choice0" in columns else "cmmlu" if "Question" in columns else "ceval"
    keys = {
        "cmmlu": ("Question", ["A", "B", "C", "D"], "Answer"),
        "ceval": ("question", ["A", "B", "C", "D"], "answer"),
        "mmlu": ("question", ["choice0", "choice1", "choice2", "choice3"], "answer"),
    }[layout]
    if not {keys[0], *keys[1], keys[2]} <= columns:
        raise UserError(f"{path}: columns {sorted(columns)} are not the {layout} layout; set layout: on the task")
    questions = []
    for i, row in enumerate(rows):
        answer = row[keys[2]].strip()
        answer = LETTERS[int(answer)] if answer.isdigit() else answer
        choices = tuple(row[k] for k in keys[1])
        questions.append(Question(f"{subject}/{i}", subject, row[keys[0]], choices, answer))
    return layout, questions


def _split_files(root: Path, split: str) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if p.parent.name == split)


def load_questions(task: TaskConfig, root: Path, split: str) -> dict[str, list[Question]]:
    """{subject: questions} of one split (test / val / dev) under a benchmark folder."""
    files = _split_files(root, split)
    if split != "dev" and not files:
        files = _split_files(root, "val")  # C-Eval's test split has no answers: its val split is the one scored
    out: dict[str, list[Question]] = {}
    for path in files:
        _, questions = _read_csv(path, task.layout)
        if questions and (task.subjects is None or questions[0].subject in task.subjects):
            out[questions[0].subject] = questions
    return out


def _mcq_messages(q: Question, shots: list[Question], english: bool) -> list[Message]:
    subject = q.subject.replace("_", " ")
    if english:
        intro = f"The following is a multiple choice question about {subject}. Answer with the letter of the option."
    else:
        intro = f"以下是关于{subject}的单项选择题，请直接给出正确答案的选项。"

    def ask(x: Question) -> str:
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, x.choices))
        return f"{intro}\n\n{x.question}\n{options}\n{'Answer:' if english else '答案：'}"

    messages = []
    for shot in shots:
        messages += [Message("user", ask(shot)), Message("assistant", shot.answer)]
    return [*messages, Message("user", ask(q))]


def _mcq(task: TaskConfig, ctx: Context) -> list[Row]:
    """Multiple choice: likelihood of each choice letter after the prompt (no generation), or generated answers."""
    root = task_path(task, ctx)
    by_subject = load_questions(task, root, "test")
    if not by_subject:
        raise UserError(
            f"task {task.name}: no question CSV files in {root}/**/test (or val); check path: and subjects:"
        )
    dev = load_questions(task, root, "dev") if task.shots else {}
    # Round robin over subjects, so that --limit takes a few questions of every subject rather than the first one.
    interleaved = [q for group in itertools.zip_longest(*by_subject.values()) for q in group if q is not None]
    questions = limited(interleaved, task, ctx)
    english = task.layout == "mmlu" or (task.layout == "auto" and questions[0].question.isascii())
    prompts = [_mcq_messages(q, dev.get(q.subject, [])[: task.shots], english) for q in questions]
    if task.method == "generate":
        answers = generate_answers(task, ctx, prompts)
        rows = [
            answered(task, q.id, role, prompt, result, q.answer)
            for role, pairs in answers.items()
            for q, (prompt, result) in zip(questions, pairs)
        ]
        graded = _graded(rows, lambda row, answer: (extract_choice(answer) == row.gold, extract_choice(answer)))
    else:
        graded = _mcq_likelihood(task, ctx, questions, prompts)
    for row, q in zip(graded, itertools.cycle(questions)):
        row.choices, row.subject = list(q.choices), q.subject
    return graded


def _mcq_likelihood(
    task: TaskConfig, ctx: Context, questions: list[Question], prompts: list[list[Message]]
) -> list[Row]:
    # Scoring a letter right after the prompt asks for no thinking: the empty think block is on the prompt side.
    # The answer starts on a fresh line after it, so the letters are Qwen3's one-token "A".."D" (no leading space),
    # all read from one forward per question.
    rendered = [ctx.engine.render(p, enable_thinking=False) for p in prompts]
    rows = []
    for role, name in ctx.models.items():
        scores = ctx.cache.map(
            "next_token",
            [(name, {"prompt": text, "candidates": LETTERS}) for text in rendered],
            lambda todo, name=name: ctx.engine.next_token_logprobs(
                [rendered[i] for i in todo], list(LETTERS), model=name
            ),
        )
        for q, prompt, letter_scores in zip(questions, rendered, scores):
            pred = LETTERS[max(range(len(LETTERS)), key=letter_scores.__getitem__)]
            correct = pred == q.answer
            row = Row(task.name, q.id, role, prompt, q.answer, pred=pred, outcome=CORRECT if correct else "wrong")
            row.score = {"accuracy": float(correct)}
            rows.append(row)
    return rows


# The runner of each task type but judge (eval/judge.py); eval/run.py's run_task picks one.
RUNNERS: dict[str, Callable[[TaskConfig, Context], list[Row]]] = {
    "loss": _loss,
    "probe": _probe,
    "generation": _generation,
    "mcq": _mcq,
    "math": _math,
}
