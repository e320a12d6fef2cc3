"""Answers out of model output: the thinking split, choice letters, math equivalence, and the outcome of an item.

Shared by evaluation (eval/tasks.py) and the GRPO rewards (train/rewards.py), so both grade an answer alike.

Reasoning models write `<think>…</think>` before the answer; Qwen3's template may open `<think>` in the prompt,
so the output then has only the closing tag (unpaired). The answer is what follows the **last** `</think>`.
Output that ends inside the thinking because it hit max tokens has no answer yet: its outcome is
"thinking_truncated", which is counted apart and never as wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneforge.constants import THINK_CLOSE, THINK_OPEN

CORRECT, WRONG, TRUNCATED = "correct", "wrong", "thinking_truncated"


@dataclass(frozen=True)
class Answer:
    """Model output split into reasoning (None without a think block) and answer; truncated: cut inside thinking."""

    reasoning: str | None
    answer: str
    truncated: bool


def split_answer(content: str, reasoning: str | None = None, finish_reason: str = "stop") -> Answer:
    """Split at the last `</think>` (paired or unpaired); `reasoning` is what a parser already split off."""
    if THINK_CLOSE in content:
        before, content = content.rsplit(THINK_CLOSE, 1)
        before = before.split(THINK_OPEN, 1)[-1]
        reasoning = (reasoning or "") + before
    elif THINK_OPEN in content:  # opened, never closed: everything after it is still thinking
        before, thinking = content.split(THINK_OPEN, 1)
        reasoning, content = (reasoning or "") + thinking, before
    answer = content.strip()
    truncated = reasoning is not None and not answer and finish_reason == "length"
    return Answer(reasoning.strip() if reasoning is not None else None, answer, truncated)


def outcome(answer: Answer, correct: bool) -> str:
    """correct / wrong, or thinking_truncated where the output ended inside its thinking."""
    return TRUNCATED if answer.truncated else CORRECT if correct else WRONG


# Phrases that introduce the chosen letter, in the order they are trusted (the last match of the first that hits).
_LETTER = r"\(?\*{0,2}([A-J])\b\)?"
_CHOICE_PATTERNS = [
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*([A-J])\b"),
    re.compile(r"(?:答案|正确答案|正确选项|选项)\s*(?:应该|应|是|为|选)*\s*[:：]?\s*" + _LETTER),
    re.compile(r"(?i:answer)\s*(?:is|:)?\s*(?:option\s*)?[:：]?\s*" + _LETTER),
    re.compile(r"(?:选择?|选)\s*" + _LETTER),
]
_LONE_LETTER = re.compile(r"^\s*\(?([A-J])\)?(?:[.．。:：、\s]|$)")


def extract_choice(answer: str, letters: str = "ABCD") -> str | None:
    """The chosen letter in an answer ("答案是 C", "The answer is (B)", "\\boxed{A}", "B. …"), or None."""
    for pattern in _CHOICE_PATTERNS:
        found = [m for m in pattern.findall(answer) if m in letters]
        if found:
            return found[-1]
    lone = _LONE_LETTER.match(answer)
    return lone.group(1) if lone and lone.group(1) in letters else None


def gsm8k_gold(answer: str) -> str:
    """The final number of a GSM8K solution (after `####`), without thousands separators."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def math_equal(pred: str, gold: str) -> tuple[bool, str | None]:
    """Whether the prediction's final answer equals `gold` by math-verify, and the answer it read (None: none)."""
    from math_verify import parse, verify

    gold_parsed = parse(gold if "$" in gold or "\\boxed" in gold else f"${gold}$")
    pred_parsed = parse(pred)
    if not pred_parsed:
        return False, None
    return bool(verify(gold_parsed, pred_parsed)), str(pred_parsed[-1])
