"""GRPO's data: prompts (with a reference answer where a reward needs one), rendered exactly as `chat` prompts.

A record is either a question with an answer (GSM8K `question`/`answer` ending in `#### N`, MATH `problem` with
`answer` or a `\\boxed{}` `solution`, MCQ columns A-D with the letter in `answer`, any `prompt` / `instruction`), or
a conversation (messages, ShareGPT) whose last user turn is the prompt; an assistant turn after it, or an `answer`
column, is the reference. The prompt text is the chat template's generation prompt for those messages, with thinking
on or off as data.thinking says (off: off, else on), the text `tuneforge chat` feeds the model; TRL tokenizes it
without adding special tokens, as the engine does, so the ids are the chat template's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuneforge.answers import gsm8k_gold
from tuneforge.config import Config, DataConfig, DatasetConfig
from tuneforge.config_grpo import NEEDS_ANSWER
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.formats import RecordError, detect_format, fill_placeholders, to_conversation
from tuneforge.data.sources import raw_records
from tuneforge.errors import UserError

QUESTION_COLUMNS = ("prompt", "question", "problem", "query", "instruction", "Question")
ANSWER_COLUMNS = ("answer", "Answer", "solution")
MCQ_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class PromptSample:
    """One GRPO prompt: the messages up to the last user turn, its tools, and the reference answer (or None)."""

    conversation: Conversation
    answer: str | None


def reference(text: Any) -> str | None:
    """The gradable reference in an answer text: GSM8K's number after `####`; otherwise the text (math-verify reads
    a `\\boxed{}` solution's box itself)."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text)
    return gsm8k_gold(text) if "####" in text else text.strip()


def _column(record: Mapping[str, Any], role: str, names: tuple[str, ...], columns: Mapping[str, str]) -> str | None:
    if role in columns:
        return columns[role] if columns[role] in record else None
    return next((name for name in names if name in record), None)


def _question(record: Mapping[str, Any], ds: DatasetConfig) -> Conversation | None:
    """A one-turn prompt from a question column (MCQ options appended as `A. …` lines), or None."""
    column = _column(record, "prompt", QUESTION_COLUMNS, ds.columns)
    if column is None:
        return None
    text = str(record[column])
    if record.get("input"):  # alpaca: the instruction's input follows it
        text = f"{text}\n{record['input']}"
    if all(letter in record for letter in MCQ_LETTERS):
        text += "\n" + "\n".join(f"{letter}. {record[letter]}" for letter in MCQ_LETTERS)
    system = record.get(ds.columns.get("system", "system")) or ds.system
    messages = ([Message("system", str(system))] if system else []) + [Message("user", text)]
    tools = record.get(ds.columns.get("tools", "tools"))
    return Conversation(messages, json.loads(tools) if isinstance(tools, str) else tools)


def _conversation_prompt(record: Mapping[str, Any], ds: DatasetConfig) -> tuple[Conversation, str | None] | None:
    """A conversation cut after its last user turn, and the first assistant reply after it (or None)."""
    fmt = detect_format(record, ds.columns)
    if fmt not in ("messages", "sharegpt"):
        return None
    conv = to_conversation(record, fmt, ds.columns)
    users = [i for i, m in enumerate(conv.messages) if m.role == "user"]
    if not users:
        raise RecordError("no user turn to take the prompt from")
    cut = users[-1] + 1
    reply = next((m.content for m in conv.messages[cut:] if m.role == "assistant"), None)
    if conv.messages[0].role != "system" and ds.system:
        conv = Conversation([Message("system", ds.system), *conv.messages], conv.tools)
        cut += 1
    return Conversation(conv.messages[:cut], conv.tools), reply


def to_prompt(record: Mapping[str, Any], ds: DatasetConfig) -> PromptSample:
    """A record as a GRPO prompt and its reference answer."""
    answer_column = _column(record, "answer", ANSWER_COLUMNS, ds.columns)
    answer = reference(record[answer_column]) if answer_column else None
    conv = _question(record, ds)
    if conv is None:
        found = _conversation_prompt(record, ds)
        if found is None:
            raise RecordError(
                f"no prompt: expected a column {', '.join(QUESTION_COLUMNS)} or a conversation (messages, "
                f"conversations); found {', '.join(map(str, record))}"
            )
        conv, reply = found
        answer = answer if answer_column else reference(reply)
    return PromptSample(fill_placeholders(conv, ds.placeholders), answer)


def load_prompts(cfg: DataConfig, needs_answer: bool, log=print) -> list[PromptSample]:
    """Every configured dataset's prompts (at most max_samples each); a missing reference fails in one line."""
    import random

    samples: list[PromptSample] = []
    for i, ds in enumerate(cfg.datasets):
        part = []
        for located in raw_records(ds):
            try:
                sample = to_prompt(located.record, ds)
            except RecordError as exc:
                raise UserError(f"{located.where}: {exc}") from None
            if needs_answer and sample.answer is None:
                raise UserError(
                    f"{located.where}: no reference answer for method.grpo.rewards accuracy / choice: expected a "
                    f"column {', '.join(ANSWER_COLUMNS)}, or map yours with data.datasets.{i}.columns: "
                    "{answer: COLUMN}"
                )
            part.append(sample)
        if ds.max_samples:
            random.Random(cfg.seed).shuffle(part)
            part = part[: ds.max_samples]
        log(f"data: {ds.path}: {len(part)} prompts")
        samples += part
    return samples


def render_prompt(conv: Conversation, tokenizer, thinking: bool) -> str:
    """The generation prompt of `conv` by the tokenizer's own chat template, as `tuneforge chat` renders it."""
    return tokenizer.apply_chat_template(
        [m.to_template() for m in conv.messages],
        tools=conv.tools or None,
        add_generation_prompt=True,
        tokenize=False,
        enable_thinking=thinking,
    )


def prompt_dataset(samples: list[PromptSample], tokenizer, cfg: DataConfig, log=print) -> Any:
    """A `datasets.Dataset` of `prompt` (text), `answer`, `tools` (JSON) and `length` (prompt tokens) columns; prompts
    longer than data.max_length are dropped."""
    import datasets

    rows: dict[str, list] = {"prompt": [], "answer": [], "tools": [], "length": []}
    dropped = 0
    for sample in samples:
        text = render_prompt(sample.conversation, tokenizer, cfg.thinking != "off")
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > cfg.max_length:
            dropped += 1
            continue
        rows["length"].append(length)
        rows["prompt"].append(text)
        rows["answer"].append(sample.answer or "")
        rows["tools"].append(json.dumps(sample.conversation.tools or []))
    if not rows["prompt"]:
        raise UserError(f"data: every prompt is longer than data.max_length={cfg.max_length}; raise it")
    if dropped:
        log(f"data: dropped {dropped} prompts longer than data.max_length={cfg.max_length}")
    return datasets.Dataset.from_dict(rows)


def prepare_prompts(cfg: Config, tokenizer, log=print) -> Any:
    """The training set of method.objective grpo: prompts with their references (see `prompt_dataset`)."""
    grpo = cfg.method.grpo
    if cfg.data.val_size:
        log("data.val_size: not used by method.objective: grpo; measure the run with `tuneforge eval`")
    samples = load_prompts(cfg.data, any(r.name in NEEDS_ANSWER for r in grpo.rewards), log)
    if grpo.instruction:
        for sample in samples:
            last = sample.conversation.messages[-1]  # the last user turn: load_prompts cut the conversation there
            last.content = f"{last.content}\n{grpo.instruction}"
    return prompt_dataset(samples, tokenizer, cfg.data, log)
