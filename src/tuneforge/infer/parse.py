"""Streaming text post-processing: stop strings, and splitting output into reasoning, answer and tool calls.

Pure text, no torch: the engine feeds decoded pieces in as they arrive and gets back what is safe to show.
The split follows Qwen3 (and vLLM's `qwen3` reasoning parser plus its `hermes` tool parser):

    <think>\\n{reasoning}\\n</think>\\n\\n{answer}<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>

- A `<think>` that opens the output (after optional whitespace), or one the prompt already opened (the
  QwQ / Qwen3-Thinking templates end the prompt with `<think>\\n`), starts the reasoning; `</think>` ends it.
  Newlines around the reasoning and those starting the answer are dropped, as `split_think` does, so the
  parts render back to the same text through the chat template.
- Reasoning cut off before `</think>` (max tokens) stays reasoning.
- With tools on, each `<tool_call>` block holding JSON with a `name` becomes a ToolCall; whitespace next to
  a block is dropped (the template puts it back); a block that is not valid JSON stays in the answer as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tuneforge.constants import THINK_CLOSE, THINK_OPEN  # re-exported: engine.py imports them from here
from tuneforge.data.conversation import ToolCall

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class Delta:
    """A piece of output: new reasoning text, new answer text, and tool calls completed by this piece."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


def partial_tail(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of one of `tags` (it may still become one)."""
    longest = min(len(text), max((len(t) for t in tags), default=1) - 1)
    for size in range(longest, 0, -1):
        if any(tag.startswith(text[-size:]) for tag in tags):
            return size
    return 0


class StopMatcher:
    """Cuts the text at the first stop string, holding back an end that may be the start of one."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to pass on, and whether a stop string was found (nothing follows it)."""
        self._buf += text
        hits = [i for i in (self._buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._buf = self._buf[: min(hits)], ""
            return out, True
        keep = partial_tail(self._buf, self._stops)
        out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        return out, False

    def flush(self) -> str:
        """What was held back, at the end of the output."""
        out, self._buf = self._buf, ""
        return out


class OutputParser:
    """Splits streamed model text into reasoning, answer and tool calls (see the module docstring)."""

    def __init__(self, *, think: bool = True, reasoning_open: bool = False, tools: bool = False) -> None:
        """think=False passes all text through as answer (raw completions); reasoning_open: the prompt opened it."""
        self._state = "content" if not think else "reasoning" if reasoning_open else "start"
        self.had_reasoning = self._state == "reasoning"  # a think block was opened (its text may be empty)
        self._tools = tools
        self._buf = ""
        self._reasoning_begun = False  # leading newlines of the reasoning are dropped
        self._strip = ""  # characters dropped from the start of the answer that follows a block

    def feed(self, text: str) -> Delta:
        """Take the next piece of text; return what can be shown now."""
        self._buf += text
        out = Delta()
        while self._step(out):
            pass
        return out

    def finish(self) -> Delta:
        """The output ended: release what was held back."""
        out, buf, self._buf = Delta(), self._buf, ""
        if self._state == "reasoning":
            self._reasoning(out, buf.rstrip("\n"))
        elif self._state == "tool":
            self._tool_call(out, buf, closed=False)
        else:
            out.content += buf.lstrip(self._strip)
        return out

    def _step(self, out: Delta) -> bool:
        """Consume what the buffer allows in the current state; True when the state changed (go again)."""
        buf = self._buf
        if self._state == "start":
            head = buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf, self._state, self.had_reasoning = head[len(THINK_OPEN) :], "reasoning", True
                return True
            if not head or THINK_OPEN.startswith(head):
                return False  # only whitespace or part of "<think>" so far
            self._state = "content"
            return True
        if self._state == "reasoning":
            end = buf.find(THINK_CLOSE)
            if end >= 0:
                self._reasoning(out, buf[:end].rstrip("\n"))
                self._buf, self._state, self._strip = buf[end + len(THINK_CLOSE) :], "content", "\n"
                return True
            # Hold back a possible start of </think> and the newlines before it (dropped if it comes).
            keep = _hold(buf, THINK_CLOSE, "\n")
            self._reasoning(out, buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        if self._state == "tool":
            end = buf.find(TOOL_CLOSE)
            if end < 0:
                return False  # wait for the whole block
            self._tool_call(out, buf[:end], closed=True)
            self._buf, self._state = buf[end + len(TOOL_CLOSE) :], "content"
            return True
        if self._strip:
            if not buf.lstrip(self._strip):
                return False  # only what would be dropped so far
            buf, self._strip = buf.lstrip(self._strip), ""
        if not self._tools:
            out.content, self._buf = out.content + buf, ""
            return False
        start = buf.find(TOOL_OPEN)
        if start >= 0:
            out.content += buf[:start].rstrip()  # the whitespace before a call is the template's
            self._buf, self._state = buf[start + len(TOOL_OPEN) :], "tool"
            return True
        keep = _hold(buf, TOOL_OPEN, " \t\r\n")
        out.content += buf[: len(buf) - keep]
        self._buf = buf[len(buf) - keep :]
        return False

    def _reasoning(self, out: Delta, text: str) -> None:
        if not self._reasoning_begun:
            text = text.lstrip("\n")
            self._reasoning_begun = bool(text)
        out.reasoning += text

    def _tool_call(self, out: Delta, body: str, *, closed: bool) -> None:
        call = parse_tool_call(body)
        if call is None:
            out.content += TOOL_OPEN + body + (TOOL_CLOSE if closed else "")
        else:
            out.tool_calls.append(call)
            self._strip = " \t\r\n"


def parser_after(prompt: str, tools: bool = False) -> OutputParser:
    """The parser for output that follows `prompt`: inside the reasoning where the template opened it (QwQ, R1)."""
    return OutputParser(reasoning_open=prompt.rstrip().endswith(THINK_OPEN), tools=tools)


def split_output(prompt: str, text: str) -> tuple[str | None, str]:
    """Reasoning (None without a think block) and answer of a whole output `text` that followed `prompt`."""
    parser = parser_after(prompt)
    parts = [parser.feed(text), parser.finish()]
    reasoning = "".join(part.reasoning for part in parts)
    return (reasoning if parser.had_reasoning else None), "".join(part.content for part in parts)


def _hold(text: str, tag: str, space: str) -> int:
    """How much of the end of `text` to hold back: a possible start of `tag` and the `space` before it."""
    keep = partial_tail(text, (tag,))
    rest = text[: len(text) - keep]
    return keep + len(rest) - len(rest.rstrip(space))


def parse_tool_call(body: str) -> ToolCall | None:
    """The ToolCall in the JSON between <tool_call> tags, or None when it is not a call."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", {})
    return ToolCall(name=data["name"], arguments=arguments if isinstance(arguments, dict | str) else {})
