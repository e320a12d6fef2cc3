"""The prompt templates of each generation step (English and Chinese defaults, user overrides) and reply schemas.

A template's version is the hash of its text: it goes into every record's provenance and into each request's
journal key, so editing a template re-asks exactly the requests it changes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, create_model

from tuneforge.errors import UserError

FIELD = re.compile(r"\{(chunk|count|question|answer|language|genre|audience|history|tags)\}")

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
    ("questions_variation", "en"): (
        "Read the text below and write {count} distinct questions that it answers, in the form of {genre}, as "
        "{audience} would ask them. Each question must be self-contained and answerable from the text alone.\n\n"
        '<text>\n{chunk}\n</text>\n\nReply with JSON only: {"questions": ["...", "..."]}'
    ),
    ("questions_variation", "zh"): (
        "阅读下面的文本，以“{genre}”的形式、站在“{audience}”的角度，提出 {count} 个不同的问题，"
        "答案都必须能在文本中找到。每个问题要独立完整，只凭文本即可回答。\n\n"
        '<text>\n{chunk}\n</text>\n\n只回复 JSON：{"questions": ["...", "..."]}'
    ),
    ("reasoning", "en"): (
        "Here are a reference text, a question and its answer. Write the step-by-step reasoning that leads from "
        "the text to this answer, in the first person, as thinking before answering. Reply with the reasoning "
        "only, without restating the final answer.\n\n<text>\n{chunk}\n</text>\n\n"
        "Question: {question}\n\nAnswer: {answer}"
    ),
    ("reasoning", "zh"): (
        "下面是参考文本、一个问题和它的回答。写出从文本推出这个回答的逐步推理过程，用第一人称，"
        "就像回答之前的思考。只回复推理过程，不要重复最终回答。\n\n<text>\n{chunk}\n</text>\n\n"
        "问题：{question}\n\n回答：{answer}"
    ),
    ("follow_up", "en"): (
        "Here are a reference text and a conversation about it. Write the next question the user would ask: "
        "a natural follow-up to the conversation that the text answers.\n\n<text>\n{chunk}\n</text>\n\n"
        '<conversation>\n{history}\n</conversation>\n\nReply with JSON only: {"question": "..."}'
    ),
    ("follow_up", "zh"): (
        "下面是参考文本和一段关于它的对话。写出用户接下来会问的问题：顺着对话自然追问，且文本能回答。\n\n"
        '<text>\n{chunk}\n</text>\n\n<conversation>\n{history}\n</conversation>\n\n只回复 JSON：{"question": "..."}'
    ),
    ("tags", "en"): (
        "Label the question and answer below with the domain tags that fit them, chosen only from: {tags}.\n\n"
        "<text>\n{chunk}\n</text>\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
        'Reply with JSON only: {"tags": ["..."]}'
    ),
    ("tags", "zh"): (
        "给下面的问题和回答标注合适的领域标签，只能从这些标签中选：{tags}。\n\n"
        "<text>\n{chunk}\n</text>\n\n问题：{question}\n\n回答：{answer}\n\n"
        '只回复 JSON：{"tags": ["..."]}'
    ),
    ("free_tags", "en"): (
        "Label the question and answer below with one to three short lowercase domain tags of your choice.\n\n"
        "<text>\n{chunk}\n</text>\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
        'Reply with JSON only: {"tags": ["..."]}'
    ),
    ("free_tags", "zh"): (
        "给下面的问题和回答标注一到三个简短的领域标签，标签由你决定。\n\n"
        "<text>\n{chunk}\n</text>\n\n问题：{question}\n\n回答：{answer}\n\n"
        '只回复 JSON：{"tags": ["..."]}'
    ),
}


# Bounds on every free string and list of a reply: under structured output they also end a model that would
# otherwise write one string until max_tokens (a looping model; any random-weight model).
QUESTION = Annotated[str, StringConstraints(min_length=1, max_length=400)]


class Questions(BaseModel):
    """Reply of the questions step."""

    questions: list[QUESTION] = Field(min_length=1, max_length=20)


class Judgement(BaseModel):
    """Reply of the judge step."""

    score: int = Field(ge=1, le=10)
    supported: bool
    reason: str = Field("", max_length=400)


class FollowUp(BaseModel):
    """Reply of the follow-up step."""

    question: QUESTION


def tags_schema(labels: list[str] | None) -> type[BaseModel]:
    """Reply of the tags step: one or more of `labels` (enforced by the schema, so also by structured output),
    or free tags when there is no list."""
    tag = Literal[tuple(labels)] if labels else Annotated[str, StringConstraints(max_length=60)]  # type: ignore[valid-type]
    return create_model("Tags", tags=(list[tag], Field(min_length=1, max_length=5)))  # type: ignore[valid-type]


class Templates:
    """The template of each (step, language): the user's override for a step, else the default."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self._overrides = {step: _read(step, value) for step, value in overrides.items()}

    def get(self, step: str, language: str) -> tuple[str, str]:
        """(template text, version) for a step in a language."""
        text = self._overrides.get(step) or DEFAULTS[(step, language)]
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]


def fill(template: str, **fields: str) -> str:
    """The template with its fields ({chunk}, {count}, {question}, ...) replaced in one pass (other braces stay)."""
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
