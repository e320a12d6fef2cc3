"""Conversation → (input_ids, labels), rendered by the tokenizer's own chat template, token-exactly.

The ids are exactly `tokenizer.apply_chat_template(messages, tools=..., enable_thinking=...)`. Which
tokens are trained is found from character offsets in that rendered text, using markers learnt
from the template itself by rendering probe conversations (no per-model template is written here):

- `header`: what opens every assistant turn ("<|im_start|>assistant\\n" for Qwen);
- `think_off`: what the generation prompt adds after the header with thinking off (Qwen3's empty
  "<think>\\n\\n</think>\\n\\n"); it stays on the prompt side unless thinking is keep_empty;
- `think_on`: what the generation prompt adds with thinking on (QwQ / R1 open "<think>\\n"); prompt side,
  since inference feeds it to the model;
- `end`: the end-of-turn text ("<|im_end|>"), trained so the model learns to stop;
- `reasoning`: where the template lets the last assistant turn show its reasoning. "field": it renders
  `reasoning_content` (Qwen3); "content": it keeps a think block written into the content (QwQ); "prompt": it
  strips reasoning from every turn (DeepSeek-R1 distills), so a last turn with reasoning is rendered as the
  template's generation prompt followed by what the model generates after it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.constants import IGNORE  # re-exported: data/ modules import it from here
from tuneforge.data.conversation import Conversation, Preference

Thinking = Literal["auto", "off", "keep_empty"]
ReasoningStyle = Literal["field", "content", "prompt"]
_PROBE_Q, _PROBE_A, _PROBE_R = "PROBE-QUESTION-7f3a", "PROBE-ANSWER-7f3a", "PROBE-REASONING-7f3a"


@dataclass(frozen=True)
class TemplateMarkers:
    """Text markers of a chat template, learnt by rendering probes."""

    header: str
    think_off: str
    think_on: str
    end: str
    reasoning: ReasoningStyle = "field"


def _chat_text(tokenizer, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def with_think_block(reasoning: str, content: str) -> str:
    """The assistant's output with its reasoning, as DESIGN.md invariant 2 writes it (and Qwen3's template does)."""
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"


def _reasoning_style(tokenizer, user: list[dict[str, Any]]) -> ReasoningStyle:
    field = {"role": "assistant", "content": _PROBE_A, "reasoning_content": _PROBE_R}
    if _PROBE_R in _chat_text(tokenizer, user + [field]):
        return "field"
    content = {"role": "assistant", "content": with_think_block(_PROBE_R, _PROBE_A)}
    return "content" if _PROBE_R in _chat_text(tokenizer, user + [content]) else "prompt"


def _common_prefix(*texts: str) -> str:
    first = min(texts, key=len)
    for i, ch in enumerate(first):
        if any(t[i] != ch for t in texts):
            return first[:i]
    return first


@functools.lru_cache(maxsize=8)
def _markers_for(tokenizer) -> TemplateMarkers:
    user = [{"role": "user", "content": _PROBE_Q}]
    base = _chat_text(tokenizer, user)
    gen_on = _chat_text(tokenizer, user, add_generation_prompt=True, enable_thinking=True)[len(base) :]
    gen_off = _chat_text(tokenizer, user, add_generation_prompt=True, enable_thinking=False)[len(base) :]
    turn = _chat_text(tokenizer, user + [{"role": "assistant", "content": _PROBE_A}])[len(base) :]
    opening = turn[: turn.index(_PROBE_A)]
    header = _common_prefix(gen_on, gen_off, opening)
    added = len(header)  # the header's part of what the generation prompt adds
    if not header and not opening:
        # The user turn itself ends in the assistant's header (DeepSeek-R1-0528-Qwen3: "<｜User｜>…<｜Assistant｜>").
        header, added = base[base.index(_PROBE_Q) + len(_PROBE_Q) :], 0
    end = turn[turn.index(_PROBE_A) + len(_PROBE_A) :].rstrip()
    if not header or not end:
        raise ValueError("cannot find the assistant header and end-of-turn text in the chat template")
    return TemplateMarkers(header, gen_off[added:], gen_on[added:], end, _reasoning_style(tokenizer, user))


def trained_modes(thinking: Thinking, with_reasoning: int, without_reasoning: int) -> list[str]:
    """The thinking modes a run trained in ("on", "off"), from data.thinking and its samples with / without reasoning.

    A sample trained with a think block follows a thinking-mode prompt ("on"); one whose prompt carries the empty
    think block was trained in non-thinking mode ("off"); keep_empty trains that block, so the prompt is "on"'s.
    """
    modes = set()
    if with_reasoning and thinking != "off":
        modes.add("on")
    if without_reasoning or (with_reasoning and thinking == "off"):
        modes.add("on" if thinking == "keep_empty" else "off")
    return [mode for mode in ("on", "off") if mode in modes]


def template_markers(tokenizer) -> TemplateMarkers:
    """The markers of this tokenizer's chat template (cached per tokenizer)."""
    return _markers_for(tokenizer)


def _final_reasoning(conv: Conversation, thinking: Thinking) -> str | None:
    """The reasoning of a conversation-ending assistant turn, where it is to be shown."""
    last = conv.messages[-1]
    return last.reasoning if last.role == "assistant" and thinking != "off" else None


def template_inputs(
    conv: Conversation, thinking: Thinking, style: ReasoningStyle = "field"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and template kwargs for apply_chat_template, as the thinking mode and the template's style imply.

    For the "prompt" style, a last turn with reasoning is left out and the generation prompt asked for instead:
    `completion` gives the text that follows it.
    """
    messages = []
    for m in conv.messages:
        msg = m.to_template()
        if thinking == "off" or style != "field":
            # Templates that ignore reasoning_content drop it from history, as they do at inference.
            msg.pop("reasoning_content", None)
        messages.append(msg)
    kwargs: dict[str, Any] = {"enable_thinking": thinking != "off" and conv.has_reasoning}
    reasoning = _final_reasoning(conv, thinking)
    if reasoning and style == "content":
        messages[-1]["content"] = with_think_block(reasoning, conv.messages[-1].content)
    elif reasoning and style == "prompt" and not conv.messages[-1].tool_calls:
        messages.pop()
        kwargs["add_generation_prompt"] = True
    if conv.tools:
        kwargs["tools"] = conv.tools
    return messages, kwargs


def completion(conv: Conversation, markers: TemplateMarkers) -> str:
    """The last turn as the model generates it after the generation prompt (which may open the think block)."""
    last = conv.messages[-1]
    text = with_think_block(last.reasoning or "", last.content)
    return text.removeprefix(markers.think_on) + markers.end


def trained_spans(
    text: str, conv: Conversation, markers: TemplateMarkers, thinking: Thinking, last_turn_only: bool
) -> list[tuple[int, int]]:
    """Character spans of `text` that carry loss: each assistant turn's output through its end marker."""
    spans, cursor = [], 0
    assistants = [m for m in conv.messages if m.role == "assistant"]
    for message in assistants:
        start = text.find(markers.header, cursor)
        if start < 0:
            raise ValueError("an assistant turn was not found in the rendered text")
        start += len(markers.header)
        has_reasoning = bool(message.reasoning) and thinking != "off"
        if (
            markers.think_off
            and not has_reasoning
            and thinking != "keep_empty"
            and text.startswith(markers.think_off, start)
        ):
            start += len(markers.think_off)  # the empty think block is prompt, as at inference
        elif markers.think_on and text.startswith(markers.think_on, start):
            start += len(markers.think_on)  # the template's own opening, fed by inference too
        end = text.find(markers.end, start)
        if end < 0:
            raise ValueError("an assistant turn has no end-of-turn marker in the rendered text")
        end += len(markers.end)
        spans.append((start, end))
        cursor = end
    return spans[-1:] if last_turn_only else spans


@dataclass
class Rendered:
    """One tokenized sample: ids, labels (IGNORE where masked) and the rendered text."""

    input_ids: list[int]
    labels: list[int]
    text: str


def render(conv: Conversation, tokenizer, thinking: Thinking = "auto", train_on: str = "all_turns") -> Rendered:
    """Render a conversation with the tokenizer's chat template and label the assistant's output."""
    markers = template_markers(tokenizer)
    messages, kwargs = template_inputs(conv, thinking, markers.reasoning)
    text = _chat_text(tokenizer, messages, **kwargs)
    if kwargs.get("add_generation_prompt"):
        text += completion(conv, markers)
    spans = trained_spans(text, conv, markers, thinking, train_on == "last_turn")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    labels = [IGNORE] * len(ids)
    span_iter = iter(spans)
    span = next(span_iter, None)
    for i, (begin, finish) in enumerate(encoding["offset_mapping"]):
        while span is not None and begin >= span[1]:
            span = next(span_iter, None)
        if span is None:
            break
        # A token is trained only when it lies wholly inside a span.
        if begin >= span[0] and finish <= span[1]:
            labels[i] = ids[i]
    return Rendered(ids, labels, text)


@dataclass
class RenderedPreference:
    """A preference sample tokenized: the shared prompt ids and, per answer, the ids that follow them.

    `prompt_ids + chosen_ids` is exactly the chat template's rendering of prompt + chosen (the same for rejected).
    Of an answer's ids, the first `*_trained` carry the loss: its output through the end-of-turn marker (what follows,
    Qwen's newline after <|im_end|>, is the template's and is not scored). KTO samples have one answer only.
    """

    prompt_ids: list[int]
    chosen_ids: list[int] | None
    rejected_ids: list[int] | None
    chosen_trained: int = 0
    rejected_trained: int = 0


def render_preference(sample: Preference, tokenizer, thinking: Thinking = "auto") -> RenderedPreference:
    """Render prompt + each answer with the chat template; split off the prompt ids both renderings share.

    Each answer is rendered as the last turn of a conversation, by `render`. The prompt ends where the first
    answer's trained tokens start (after the empty think block for answers without reasoning, as at inference);
    when the answers differ there (one reasons, the other does not) the shared part, the assistant header, is the
    prompt and the other's empty think block is part of its answer, scored with it.
    """
    answers = [a for a in (sample.chosen, sample.rejected) if a is not None]
    rendered = [render(sample.with_answer(a), tokenizer, thinking, "last_turn") for a in answers]
    starts, ends = [], []
    for r in rendered:
        trained = [i for i, label in enumerate(r.labels) if label != IGNORE]
        if not trained:
            raise ValueError("an answer has no trained token")
        starts.append(trained[0])
        ends.append(trained[-1] + 1)
    prompt_len = min(starts)
    prompt_ids = rendered[0].input_ids[:prompt_len]
    if any(r.input_ids[:prompt_len] != prompt_ids for r in rendered):
        raise ValueError("the chat template renders the prompt differently before the chosen and rejected answers")
    sides = iter(zip(rendered, ends))
    out = RenderedPreference(prompt_ids, None, None)
    for side, answer in (("chosen", sample.chosen), ("rejected", sample.rejected)):
        if answer is not None:
            r, end = next(sides)
            setattr(out, f"{side}_ids", r.input_ids[prompt_len:])
            setattr(out, f"{side}_trained", end - prompt_len)
    return out
