"""Rendering is the tokenizer's own chat template, token-exact, and labels cover exactly the assistant's output."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, needs_assets

from tuneforge.config import DatasetConfig
from tuneforge.data.conversation import Conversation, Message, ToolCall
from tuneforge.data.render import IGNORE, render, template_inputs
from tuneforge.data.sources import load_conversations

PLACEHOLDERS = {"name": "马哥教育AI小助手", "author": "马哥教育AI团队"}
DATASETS = [
    "identity.json",
    "medical_o1_reasoning_demo.json",
    "sharegpt_fastchat_dummy.json",
    "glaive_toolcall_zh_demo.json",
    "huanhuan.json",
    "self_cognition_think.jsonl",
    "reason_tool_use_demo_50.jsonl",
]


def labelled_segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def expected_trained_text(message: Message, shows_reasoning: bool) -> str:
    """What the assistant says in Qwen3's rendering: optional think block, answer, tool calls, <|im_end|>."""
    calls = [
        "<tool_call>\n" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) + "\n</tool_call>"
        if not isinstance(c.arguments, str)
        else f'<tool_call>\n{{"name": "{c.name}", "arguments": {c.arguments}}}\n</tool_call>'
        for c in message.tool_calls
    ]
    text = message.content.lstrip("\n") if shows_reasoning else message.content
    body = text + ("\n" if text and calls else "") + "\n".join(calls)
    think = f"<think>\n{message.reasoning.strip(chr(10))}\n</think>\n\n" if shows_reasoning else ""
    return think + body + "<|im_end|>"


def reasoning_shown(conv: Conversation) -> list[bool]:
    """Per assistant turn: does Qwen3's template show its reasoning (only after the last user query)?"""
    last_query = max(i for i, m in enumerate(conv.messages) if m.role == "user")
    return [bool(m.reasoning) and i > last_query for i, m in enumerate(conv.messages) if m.role == "assistant"]


@needs_assets
@pytest.mark.parametrize("name", DATASETS)
def test_every_record_renders_token_exactly(name, qwen3_tokenizer):
    convs = load_conversations(DatasetConfig(path=str(DATA_DIR / name), placeholders=PLACEHOLDERS), log=lambda *_: None)
    assert len(convs) > 0
    for conv in convs:
        rendered = render(conv, qwen3_tokenizer, thinking="auto")
        messages, kwargs = template_inputs(conv, "auto")
        assert kwargs["enable_thinking"] == conv.has_reasoning
        reference = qwen3_tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]
        assert rendered.input_ids == reference

        segments = labelled_segments(rendered.input_ids, rendered.labels)
        assistants = [m for m in conv.messages if m.role == "assistant"]
        assert len(segments) == len(assistants)
        for segment, message, shown in zip(segments, assistants, reasoning_shown(conv)):
            assert qwen3_tokenizer.decode(segment) == expected_trained_text(message, shown)


@needs_assets
def test_placeholders_filled_in_both_styles(qwen3_tokenizer):
    for name in ("identity.json", "self_cognition_think.jsonl"):
        convs = load_conversations(
            DatasetConfig(path=str(DATA_DIR / name), placeholders=PLACEHOLDERS), log=lambda *_: None
        )
        text = "".join(m.content + (m.reasoning or "") for c in convs for m in c.messages)
        assert "{{" not in text and PLACEHOLDERS["name"] in text


def _simple(reasoning: str | None) -> Conversation:
    return Conversation([Message("user", "你是谁？"), Message("assistant", "我是小助手。", reasoning=reasoning)])


@needs_assets
def test_no_reasoning_puts_empty_think_block_on_prompt_side(qwen3_tokenizer):
    rendered = render(_simple(None), qwen3_tokenizer, thinking="auto")
    prompt = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": "你是谁？"}], add_generation_prompt=True, enable_thinking=False, tokenize=True
    )["input_ids"]
    # The prompt is exactly what inference feeds with enable_thinking=False, and carries no loss.
    assert rendered.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE for label in rendered.labels[: len(prompt)])
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert qwen3_tokenizer.decode(trained) == "我是小助手。<|im_end|>"
    assert rendered.labels[-1] == IGNORE  # the newline after <|im_end|> is not trained


@needs_assets
def test_keep_empty_trains_the_empty_think_block(qwen3_tokenizer):
    rendered = render(_simple(None), qwen3_tokenizer, thinking="keep_empty")
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert qwen3_tokenizer.decode(trained) == "<think>\n\n</think>\n\n我是小助手。<|im_end|>"


@needs_assets
def test_thinking_off_drops_reasoning(qwen3_tokenizer):
    rendered = render(_simple("先想一想"), qwen3_tokenizer, thinking="off")
    assert "先想一想" not in rendered.text
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert qwen3_tokenizer.decode(trained) == "我是小助手。<|im_end|>"


@needs_assets
def test_reasoning_is_trained_in_auto_mode(qwen3_tokenizer):
    rendered = render(_simple("先想一想"), qwen3_tokenizer, thinking="auto")
    prompt = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": "你是谁？"}], add_generation_prompt=True, enable_thinking=True, tokenize=True
    )["input_ids"]
    assert rendered.input_ids[: len(prompt)] == prompt
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert qwen3_tokenizer.decode(trained) == "<think>\n先想一想\n</think>\n\n我是小助手。<|im_end|>"


@needs_assets
def test_last_turn_only(qwen3_tokenizer):
    conv = Conversation(
        [Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")]
    )
    all_turns = render(conv, qwen3_tokenizer, train_on="all_turns")
    last = render(conv, qwen3_tokenizer, train_on="last_turn")
    decode = qwen3_tokenizer.decode
    assert [decode(s) for s in labelled_segments(all_turns.input_ids, all_turns.labels)] == [
        "b<|im_end|>",
        "d<|im_end|>",
    ]
    assert [decode(s) for s in labelled_segments(last.input_ids, last.labels)] == ["d<|im_end|>"]


@needs_assets
def test_tool_call_turn_is_trained_and_tool_result_is_not(qwen3_tokenizer):
    conv = Conversation(
        [
            Message("user", "weather?"),
            Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "北京"})]),
            Message("tool", '{"temp": 20}'),
            Message("assistant", "20 度。"),
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    rendered = render(conv, qwen3_tokenizer)
    segments = [qwen3_tokenizer.decode(s) for s in labelled_segments(rendered.input_ids, rendered.labels)]
    assert segments == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>',
        "20 度。<|im_end|>",
    ]
    assert "<tools>" in rendered.text and '{"temp": 20}' in rendered.text
