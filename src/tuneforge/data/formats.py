"""Records (dicts from a file or hub) → Conversation, one small converter per format.

Each format has default column names that a dataset's `columns:` mapping can override. Converters
raise RecordError with a short reason; the caller adds the file and line.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from tuneforge.data.conversation import Conversation, Message, Preference, ToolCall, split_think

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {
        "conversations": "conversations",
        "tools": "tools",
        "system": "system",
        "role": "from",
        "content": "value",
    },
    "messages": {"messages": "messages", "tools": "tools"},
    "reasoning": {"question": "Question", "reasoning": "Complex_CoT", "answer": "Response", "system": "system"},
    "query_response": {"query": "query", "response": "response", "system": "system"},
    # Preference formats: a prompt and the answers to compare (objective dpo / orpo / simpo) or one answer with a
    # desirable / undesirable label (kto).
    "ranking": {
        "conversations": "conversations",
        "chosen": "chosen",
        "rejected": "rejected",
        "tools": "tools",
        "system": "system",
        "role": "from",
        "content": "value",
    },
    "messages_preference": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "tools": "tools"},
    "preference": {
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
        "system": "system",
        "tools": "tools",
    },
    "kto": {"prompt": "prompt", "completion": "completion", "label": "label", "system": "system", "tools": "tools"},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "reasoning": ("question", "reasoning", "answer"),
    "query_response": ("query", "response"),
    "ranking": ("conversations", "chosen", "rejected"),
    "messages_preference": ("messages", "chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
# Order matters for detection: the most specific layouts first (a ranking record also has sharegpt's columns).
DETECTION_ORDER = (
    "ranking",
    "messages_preference",
    "preference",
    "kto",
    "messages",
    "sharegpt",
    "reasoning",
    "alpaca",
    "query_response",
)
# The formats holding each kind of sample an objective trains on (objective.py `Sample`).
PAIRWISE_FORMATS = ("ranking", "messages_preference", "preference")
UNPAIRED_FORMATS = ("kto",)
SFT_FORMATS = tuple(f for f in DETECTION_ORDER if f not in PAIRWISE_FORMATS + UNPAIRED_FORMATS)
FORMATS: dict[str, tuple[str, ...]] = {
    "conversation": SFT_FORMATS,
    "pair": PAIRWISE_FORMATS,
    "labelled": UNPAIRED_FORMATS,
}
SAMPLE_OF = {fmt: sample for sample, formats in FORMATS.items() for fmt in formats}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


class RecordError(ValueError):
    """A record that does not fit its format; the message says what is missing or wrong."""


def columns_for(fmt: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """The format's column names with the dataset's overrides applied."""
    unknown = set(overrides) - set(DEFAULT_COLUMNS[fmt])
    if unknown:
        raise RecordError(
            f"columns: unknown field(s) {sorted(unknown)} for format '{fmt}'; expected some of "
            f"{sorted(DEFAULT_COLUMNS[fmt])}"
        )
    return {**DEFAULT_COLUMNS[fmt], **overrides}


def detect_format(record: Mapping[str, Any], overrides: Mapping[str, str]) -> str | None:
    """The first format whose required columns the record has, or None."""
    for fmt in DETECTION_ORDER:
        cols = {**DEFAULT_COLUMNS[fmt], **{k: v for k, v in overrides.items() if k in DEFAULT_COLUMNS[fmt]}}
        # Presence, not content: a record whose column is null or empty is reported as such by _require.
        if all(cols[field] in record for field in REQUIRED[fmt]):
            return fmt
    return None


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{what}: expected text, got {type(value).__name__}")
    return value


def _assistant(text: str) -> Message:
    reasoning, answer = split_think(text)
    return Message("assistant", answer, reasoning=reasoning)


def _with_system(system: Any, messages: list[Message]) -> list[Message]:
    system = _text(system, "system")
    return [Message("system", system), *messages] if system else messages


def _require(record: Mapping[str, Any], cols: Mapping[str, str], fmt: str) -> None:
    missing = [cols[f] for f in REQUIRED[fmt] if cols[f] not in record]
    if missing:
        raise RecordError(f"missing column(s) {missing} for format '{fmt}' (columns present: {sorted(record)})")
    empty = [cols[f] for f in REQUIRED[fmt] if record[cols[f]] in (None, "", [])]
    if empty:
        values = ", ".join(f"{c}={record[c]!r}" for c in empty)
        raise RecordError(f"empty value(s) {values}; fill them in or remove the record")


def from_alpaca(record: Mapping[str, Any], cols: Mapping[str, str]) -> Conversation:
    """instruction (+ "\\n" + input), output, optional system and history [[q, a], ...]."""
    user = _text(record[cols["instruction"]], cols["instruction"])
    extra = _text(record.get(cols["input"]), cols["input"])
    if extra:
        user = f"{user}\n{extra}"
    messages: list[Message] = []
    for pair in record.get(cols["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError(f"{cols['history']}: expected [[question, answer], ...]")
        messages += [Message("user", _text(pair[0], "history")), _assistant(_text(pair[1], "history"))]
    messages += [Message("user", user), _assistant(_text(record[cols["output"]], cols["output"]))]
    return Conversation(_with_system(record.get(cols["system"]), messages))


def _parse_json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{what}: invalid JSON ({exc.msg})") from None
    return value


def _tool_calls(value: Any, what: str) -> list[ToolCall]:
    calls = _parse_json(value, what)
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        call = call.get("function", call) if isinstance(call, dict) else call
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise RecordError(f'{what}: expected {{"name": ..., "arguments": {{...}}}}')
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            # Invalid JSON stays the raw string: templates print string arguments as they are.
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        out.append(ToolCall(call["name"], arguments))
    return out


def _tools(value: Any, what: str) -> list[dict[str, Any]] | None:
    tools = _parse_json(value, what)
    if tools in (None, "", []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordError(f"{what}: expected a list of tool definitions (JSON objects), got {tools!r:.80}")
    # Bare function schemas become OpenAI-style tools, the shape clients send at inference.
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def from_sharegpt(record: Mapping[str, Any], cols: Mapping[str, str]) -> Conversation:
    """`conversations` of {from, value}; function_call turns become assistant tool calls."""
    turns = record[cols["conversations"]]
    if not isinstance(turns, list):
        raise RecordError(f"{cols['conversations']}: expected a list of turns")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or cols["role"] not in turn:
            raise RecordError(
                f"{cols['conversations']}[{i}]: expected {{'{cols['role']}': ..., '{cols['content']}': ...}}"
            )
        role = SHAREGPT_ROLES.get(turn[cols["role"]]) if isinstance(turn[cols["role"]], str) else None
        if role is None:
            raise RecordError(
                f"{cols['conversations']}[{i}].{cols['role']}: unknown role {turn[cols['role']]!r}; "
                f"expected one of {sorted(SHAREGPT_ROLES)}"
            )
        value = turn.get(cols["content"])
        if role == "function_call":
            calls = _tool_calls(value, f"{cols['conversations']}[{i}]")
            if messages and messages[-1].role == "assistant" and not messages[-1].tool_calls:
                messages[-1].tool_calls = calls  # "gpt" text followed by its call is one assistant turn
            else:
                messages.append(Message("assistant", "", tool_calls=calls))
        elif role == "assistant":
            messages.append(_assistant(_text(value, f"{cols['conversations']}[{i}]")))
        else:
            messages.append(Message(role, _text(value, f"{cols['conversations']}[{i}]")))
    if messages and messages[0].role != "system":
        messages = _with_system(record.get(cols["system"]), messages)
    return Conversation(messages, tools=_tools(record.get(cols["tools"]), cols["tools"]))


def _content_parts(content: Any, what: str) -> tuple[str, str | None, list[ToolCall]]:
    """Split OpenAI / LLaMA-Factory content parts into (text, reasoning, tool calls)."""
    if content is None or isinstance(content, str):
        return content or "", None, []
    if not isinstance(content, list):
        raise RecordError(f"{what}: expected text or a list of parts")
    text, reasoning, calls = [], [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("value", part.get("text")) if isinstance(part, dict) else None
        if kind == "text":
            text.append(_text(value, what))
        elif kind == "reasoning":
            reasoning.append(_text(value, what))
        elif kind == "tool_call":
            calls += _tool_calls(value, what)
        else:
            raise RecordError(f"{what}: unknown content part type {kind!r}; expected text, reasoning or tool_call")
    return "".join(text), ("".join(reasoning) if reasoning else None), calls


def _openai_messages(raw: Any, column: str) -> list[Message]:
    """OpenAI-style message dicts (role, content parts, reasoning_content, tool_calls) → Messages."""
    if not isinstance(raw, list):
        raise RecordError(f"{column}: expected a list of messages")
    messages = []
    for i, m in enumerate(raw):
        what = f"{column}[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise RecordError(f"{what}: expected a role of system, user, assistant or tool")
        text, reasoning, calls = _content_parts(m.get("content"), what)
        if m.get("tool_calls"):
            calls += _tool_calls(m["tool_calls"], what)
        if m["role"] == "assistant":
            reasoning = m.get("reasoning_content", reasoning)
            if reasoning is None:
                reasoning, text = split_think(text)
            messages.append(Message("assistant", text, reasoning=reasoning, tool_calls=calls))
        else:
            messages.append(Message(m["role"], text))
    return messages


def from_messages(record: Mapping[str, Any], cols: Mapping[str, str]) -> Conversation:
    """OpenAI-style `messages` with optional reasoning_content, tool_calls and tools."""
    messages = _openai_messages(record[cols["messages"]], cols["messages"])
    return Conversation(messages, tools=_tools(record.get(cols["tools"]), cols["tools"]))


def from_reasoning(record: Mapping[str, Any], cols: Mapping[str, str]) -> Conversation:
    """question / chain of thought / answer columns (medical-o1-reasoning-SFT by default)."""
    messages = [
        Message("user", _text(record[cols["question"]], cols["question"])),
        Message(
            "assistant",
            _text(record[cols["answer"]], cols["answer"]).lstrip("\n"),
            reasoning=_text(record[cols["reasoning"]], cols["reasoning"]).strip("\n"),
        ),
    ]
    return Conversation(_with_system(record.get(cols["system"]), messages))


def from_query_response(record: Mapping[str, Any], cols: Mapping[str, str]) -> Conversation:
    """query / response (the ModelScope self-cognition layout)."""
    messages = [
        Message("user", _text(record[cols["query"]], cols["query"])),
        _assistant(_text(record[cols["response"]], cols["response"])),
    ]
    return Conversation(_with_system(record.get(cols["system"]), messages))


CONVERTERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, str]], Conversation]] = {
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "messages": from_messages,
    "reasoning": from_reasoning,
    "query_response": from_query_response,
}


def _answer(value: Any, what: str, content_key: str = "content") -> Message:
    """One assistant answer: plain text, a message dict ({role, content} or sharegpt's {from, value}), or a list
    holding one (TRL's conversational layout)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"{what}: expected one assistant message, got a list of {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", value.get("from", "assistant"))
        if SHAREGPT_ROLES.get(role) != "assistant":
            raise RecordError(f"{what}: expected an assistant answer, got role {role!r}")
        content = value.get(content_key, value.get("content"))
        messages = _openai_messages([{**value, "role": "assistant", "content": content}], what)
        return messages[0]
    return _assistant(_text(value, what))


def _preference(prompt: Conversation, system: Any, answers: dict[str, Message | None]) -> Preference:
    """A Preference whose prompt ends where the answers begin (a user or tool turn)."""
    if not prompt.messages or prompt.messages[-1].role not in ("user", "tool"):
        raise RecordError("the prompt must end with a user (or tool) turn, which the chosen/rejected answers follow")
    if prompt.messages[0].role != "system":
        prompt.messages = _with_system(system, prompt.messages)
    return Preference(prompt, **answers)


def from_ranking(record: Mapping[str, Any], cols: Mapping[str, str]) -> Preference:
    """LLaMA-Factory's ranking layout: sharegpt `conversations` as the prompt, `chosen` / `rejected` turns."""
    prompt = from_sharegpt(record, cols)  # with the record's system prompt
    answers = {side: _answer(record[cols[side]], cols[side], cols["content"]) for side in ("chosen", "rejected")}
    return _preference(prompt, None, answers)


def _prompt(value: Any, what: str, tools: Any) -> Conversation:
    """A prompt given as text (one user turn) or as OpenAI-style messages."""
    messages = [Message("user", _text(value, what))] if isinstance(value, str) else _openai_messages(value, what)
    return Conversation(messages, tools=_tools(tools, "tools"))


def from_preference(record: Mapping[str, Any], cols: Mapping[str, str]) -> Preference:
    """TRL's layout: `prompt` / `chosen` / `rejected`, plain text or conversational (lists of messages)."""
    prompt = _prompt(record[cols["prompt"]], cols["prompt"], record.get(cols["tools"]))
    answers = {side: _answer(record[cols[side]], cols[side]) for side in ("chosen", "rejected")}
    return _preference(prompt, record.get(cols["system"]), answers)


def from_messages_preference(record: Mapping[str, Any], cols: Mapping[str, str]) -> Preference:
    """OpenAI-style `messages` (the prompt) with `chosen` / `rejected` assistant messages."""
    prompt = from_messages(record, cols)
    answers = {side: _answer(record[cols[side]], cols[side]) for side in ("chosen", "rejected")}
    return _preference(prompt, None, answers)


def from_kto(record: Mapping[str, Any], cols: Mapping[str, str]) -> Preference:
    """KTO's unpaired layout: `prompt`, one `completion` and a boolean `label` (true: desirable)."""
    label = record[cols["label"]]
    if not isinstance(label, bool):
        raise RecordError(f"{cols['label']}: expected true (desirable) or false (undesirable), got {label!r}")
    prompt = _prompt(record[cols["prompt"]], cols["prompt"], record.get(cols["tools"]))
    answer = _answer(record[cols["completion"]], cols["completion"])
    return _preference(prompt, record.get(cols["system"]), {"chosen" if label else "rejected": answer})


PREFERENCE_CONVERTERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, str]], Preference]] = {
    "ranking": from_ranking,
    "messages_preference": from_messages_preference,
    "preference": from_preference,
    "kto": from_kto,
}


def fill_placeholders(conv: Conversation, values: Mapping[str, str]) -> Conversation:
    """Replace {{name}} and {{NAME}} style placeholders in every text of the conversation."""
    if not values:
        return conv
    pairs = [
        (f"{{{{{variant}}}}}", value)
        for key, value in values.items()
        for variant in {key, key.lower(), key.upper(), key.capitalize()}
    ]

    def fill(text: str | None) -> str | None:
        if text is None:
            return None
        for pattern, value in pairs:
            text = text.replace(pattern, value)
        return text

    for m in conv.messages:
        m.content = fill(m.content) or ""
        m.reasoning = fill(m.reasoning)
    return conv


# The shape fill_placeholders replaces: {{name}}, letters, digits and underscores, no spaces.
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")


def unfilled_placeholders(conv: Conversation) -> set[str]:
    """Names of the `{{name}}` placeholders still left in the conversation's texts."""
    texts = (text for m in conv.messages for text in (m.content, m.reasoning) if text)
    return {name for text in texts for name in PLACEHOLDER.findall(text)}


def to_conversation(record: Mapping[str, Any], fmt: str, overrides: Mapping[str, str]) -> Conversation:
    """Convert one record of a known format (not 'auto') to a Conversation."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object per record, got {type(record).__name__}")
    cols = columns_for(fmt, overrides)
    _require(record, cols, fmt)
    conv = CONVERTERS[fmt](record, cols)
    if not any(m.role == "assistant" for m in conv.messages):
        raise RecordError("no assistant turn to train on")
    if not any(m.role == "user" for m in conv.messages):
        raise RecordError("no user turn: the assistant answers nothing; add the user's message or remove the record")
    return conv


def to_preference(record: Mapping[str, Any], fmt: str, overrides: Mapping[str, str]) -> Preference:
    """Convert one record of a preference format (pairwise or kto) to a Preference."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object per record, got {type(record).__name__}")
    cols = columns_for(fmt, overrides)
    _require(record, cols, fmt)
    return PREFERENCE_CONVERTERS[fmt](record, cols)
