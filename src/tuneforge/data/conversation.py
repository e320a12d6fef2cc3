"""The one conversation type every data format is converted to, and its chat-template form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class ToolCall:
    """A function call made by the assistant; `arguments` is a JSON object (or the raw string given)."""

    name: str
    arguments: dict[str, Any] | str

    def to_template(self) -> dict[str, Any]:
        """OpenAI-style tool call, as chat templates expect."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Message:
    """One turn. Assistant turns may carry reasoning (the text inside <think>) and tool calls."""

    role: Role
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    def to_template(self) -> dict[str, Any]:
        """The message as `tokenizer.apply_chat_template` takes it (`reasoning_content`, `tool_calls`)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out["reasoning_content"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = [call.to_template() for call in self.tool_calls]
        return out


@dataclass
class Conversation:
    """A training sample: messages in order, plus the tools offered to the model (if any)."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None

    @property
    def has_reasoning(self) -> bool:
        """True when an assistant turn carries non-empty reasoning."""
        return any(m.role == "assistant" and m.reasoning for m in self.messages)

    def to_json(self) -> str:
        """Serialise (for caching and multiprocessing)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        """Inverse of `to_json`."""
        data = json.loads(text)
        messages = [
            Message(
                role=m["role"],
                content=m["content"],
                reasoning=m.get("reasoning"),
                tool_calls=[ToolCall(**c) for c in m.get("tool_calls") or []],
            )
            for m in data["messages"]
        ]
        return cls(messages=messages, tools=data.get("tools"))


def split_think(text: str) -> tuple[str | None, str]:
    """Split `<think>r</think>answer` into (r, answer); text without a closed think block is all answer."""
    if "</think>" not in text:
        return None, text
    head, _, answer = text.partition("</think>")
    reasoning = head.split("<think>", 1)[-1]
    return reasoning.strip("\n"), answer.lstrip("\n")


@dataclass
class Preference:
    """A preference sample: a prompt (history ending in a user turn) and the answers to compare.

    Pairwise (DPO, ORPO, SimPO): `chosen` and `rejected` are both set. Unpaired (KTO): `chosen` alone when the
    answer is desirable, `rejected` alone when it is not.
    """

    prompt: Conversation
    chosen: Message | None = None
    rejected: Message | None = None

    def with_answer(self, answer: Message) -> Conversation:
        """The prompt followed by one answer: what the chat template renders."""
        return Conversation([*self.prompt.messages, answer], tools=self.prompt.tools)

    def to_json(self) -> str:
        """Serialise (for caching and multiprocessing)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Preference:
        """Inverse of `to_json`."""
        data = json.loads(text)
        prompt = Conversation.from_json(json.dumps(data["prompt"]))

        def answer(m: dict[str, Any] | None) -> Message | None:
            if m is None:
                return None
            return Message("assistant", m["content"], m.get("reasoning"), [ToolCall(**c) for c in m["tool_calls"]])

        return cls(prompt, answer(data["chosen"]), answer(data["rejected"]))
