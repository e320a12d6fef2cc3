"""The prompt templates of each generation step (English and Chinese defaults, user overrides) and reply schemas.

A template's version is the hash of its text: it goes into every record's provenance and into each request's
journal key, so editing a template re-asks exactly the requests it changes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, Field

from tuneforge.errors import UserError

STEPS = ("questions", "answer", "judge")
FIELD = re.compile(r"\{(chunk|count|question|answer|language)\}")

DEFAULTS: dict[tuple[str, str], str] = {
    ("questions", "en"): (
        "Read the text below and write {count} distinct questions that it answers. Each question must be "
        "self-contained (a reader who has not seen the text understands it) and answerable from the text alone.\n\n"
        '<text>\n{chunk}\n</text>\n\nReply with JSON only: {"questions": ["...", "..."]}'
    ),
    ("questions", "zh"): (
        "阅读下面的文本，提出 {count} 个不同的问题，答案都必须能在文本中找到。每个问题要独立完整"
        "（没看过文本的读者也能看懂），只凭文本即可回答。\n\n"
        '<text>\n{chunk}\n</text>\n\n只回复 JSON：{"questions": ["...", "..."]}'
    ),
    ("answer", "en"): (
        "Answer the question using only the reference text. Be complete and precise; do not mention the text "
        "itself (no 'according to the text').\n\n<text>\n{chunk}\n</text>\n\nQuestion: {question}"
    ),
    ("answer", "zh"): (
        "只根据参考文本回答问题。回答要完整准确，不要提及文本本身（不要说“根据文本”）。\n\n"
        "<text>\n{chunk}\n</text>\n\n问题：{question}"
    ),
    ("judge", "en"): (
        "Rate the answer to the question from 1 (wrong or useless) to 10 (correct, complete, clear), and say "
        "whether every claim in it is supported by the reference text.\n\n<text>\n{chunk}\n</text>\n\n"
        "Question: {question}\n\nAnswer: {answer}\n\n"
        'Reply with JSON only: {"score": 1-10, "supported": true|false, "reason": "one sentence"}'
    ),
    ("judge", "zh"): (
        "给问题的回答打分，1（错误或无用）到 10（正确、完整、清楚），并判断回答中的每个说法是否都有参考文本支持。\n\n"
        "<text>\n{chunk}\n</text>\n\n问题：{question}\n\n回答：{answer}\n\n"
        '只回复 JSON：{"score": 1-10, "supported": true|false, "reason": "一句话"}'
    ),
}


class Questions(BaseModel):
    """Reply of the questions step."""

    questions: list[str] = Field(min_length=1)


class Judgement(BaseModel):
    """Reply of the judge step."""

    score: int = Field(ge=1, le=10)
    supported: bool
    reason: str = ""


class Templates:
    """The template of each (step, language): the user's override for a step, else the default."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self._overrides = {step: _read(step, value) for step, value in overrides.items()}

    def get(self, step: str, language: str) -> tuple[str, str]:
        """(template text, version) for a step in a language."""
        text = self._overrides.get(step) or DEFAULTS[(step, language)]
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]


def fill(template: str, **fields: str) -> str:
    """The template with {chunk}, {count}, {question}, {answer}, {language} replaced in one pass (other braces stay)."""
    return FIELD.sub(lambda m: fields.get(m[1], m[0]), template)


def _read(step: str, value: str) -> str:
    """An override: the file it names when it is one, else the text itself."""
    path = Path(value).expanduser()
    if "\n" not in value and len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in value:
        raise UserError(
            f"generate.prompts.{step}: '{value[:60]}' is neither a file nor a template with fields such as {{chunk}}"
        )
    return value
