"""Reasoning models with other chat templates render token-exactly, with their own thinking conventions.

QwQ-32B and the DeepSeek-R1 distills open `<think>\\n` in the generation prompt and strip reasoning from history;
R1's template strips it from the last turn too. DeepSeek-R1-0528-Qwen3-8B's ends each user turn with the assistant's
header and opens nothing: the model writes `<think>` itself. Each template is set on a copy of the real Qwen3
tokenizer.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import ASSETS, DATA_DIR, needs_assets
from test_render import labelled_segments

from tuneforge.config import DatasetConfig
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.render import IGNORE, completion, render, template_inputs, template_markers
from tuneforge.data.sources import load_conversations

TEMPLATES = {
    # name: (template file, the text after the generation prompt for reasoning r and answer a)
    "qwq": (ASSETS / "chat-templates/Qwen-QwQ-32B.jinja", "{r}\n</think>\n\n{a}<|im_end|>"),
    "r1-distill": (
        ASSETS / "chat-templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "{r}\n</think>\n\n{a}<｜end▁of▁sentence｜>",
    ),
    "r1-0528": (
        Path(__file__).parent / "data/chat-templates/deepseek-ai-DeepSeek-R1-0528-Qwen3-8B.jinja",
        "<think>\n{r}\n</think>\n\n{a}<｜end▁of▁sentence｜>",
    ),
    "qwen3": (ASSETS / "chat-templates/Qwen-Qwen3-0.6B.jinja", "<think>\n{r}\n</think>\n\n{a}<|im_end|>"),
}
# The R1 distills' own tokenizer (the Qwen2.5 vocabulary) has its turn markers as special tokens, as
# R1-0528-Qwen3's (DeepSeek-R1-0528's tokenizer configuration on Qwen3) does; without them BPE would merge the ">"
# ending one turn with the "<" opening the next.
R1_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
pytestmark = needs_assets


@pytest.fixture(scope="module", params=list(TEMPLATES))
def template(request, qwen3_tokenizer):
    """(name, a copy of the Qwen3 tokenizer carrying that template)."""
    tokenizer = copy.deepcopy(qwen3_tokenizer)
    tokenizer.chat_template = TEMPLATES[request.param][0].read_text()
    if request.param.startswith("r1"):
        tokenizer.add_special_tokens({"additional_special_tokens": R1_SPECIAL})
        tokenizer.bos_token = R1_SPECIAL[0]
    return request.param, tokenizer


@pytest.fixture(scope="module")
def medical() -> list[Conversation]:
    return load_conversations(DatasetConfig(path=str(DATA_DIR / "medical_o1_reasoning_demo.json")), log=lambda *_: None)


def ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]


def reference_ids(conv: Conversation, tokenizer) -> list[int]:
    """apply_chat_template of the messages tuneforge passes (+ the completion after a generation prompt)."""
    messages, kwargs = template_inputs(conv, "auto", template_markers(tokenizer).reasoning)
    rendered = ids(tokenizer, messages, **kwargs)
    if kwargs.get("add_generation_prompt"):
        rendered += tokenizer(completion(conv, template_markers(tokenizer)), add_special_tokens=False)["input_ids"]
    return rendered


def inference_prompt(history: list[Message], tokenizer) -> list[int]:
    """The prompt the inference engine feeds for the next assistant turn (infer/engine.py renders the same way)."""
    return ids(tokenizer, [m.to_template() for m in history], add_generation_prompt=True, enable_thinking=True)


def test_medical_reasoning_renders_token_exactly(template, medical):
    name, tokenizer = template
    for conv in medical:
        rendered = render(conv, tokenizer, thinking="auto")
        assert rendered.input_ids == reference_ids(conv, tokenizer)

        # The prompt side is exactly what inference feeds (for QwQ and R1 it ends in "<think>\n") and has no loss;
        # what follows is what the model generates after it: reasoning, answer, end of turn.
        prompt = inference_prompt(conv.messages[:-1], tokenizer)
        assert rendered.input_ids[: len(prompt)] == prompt
        assert all(label == IGNORE for label in rendered.labels[: len(prompt)])
        last = conv.messages[-1]
        expected = TEMPLATES[name][1].format(r=last.reasoning.strip("\n"), a=last.content.lstrip("\n"))
        assert [tokenizer.decode(s) for s in labelled_segments(rendered.input_ids, rendered.labels)] == [expected]
        assert tokenizer.decode(rendered.input_ids[len(prompt) :]).rstrip("\n") == expected


def test_history_reasoning_is_stripped_as_at_inference(template):
    name, tokenizer = template
    conv = Conversation(
        [
            Message("user", "2+2?"),
            Message("assistant", "4", reasoning="Two and two."),
            Message("user", "3+3?"),
            Message("assistant", "6", reasoning="Three and three."),
        ]
    )
    rendered = render(conv, tokenizer)
    assert rendered.input_ids == reference_ids(conv, tokenizer)
    assert "Two and two." not in rendered.text and "Three and three." in rendered.text
    prompt = inference_prompt(conv.messages[:-1], tokenizer)
    assert rendered.input_ids[: len(prompt)] == prompt
    end = TEMPLATES[name][1].split("{a}")[1]
    trained = [tokenizer.decode(s) for s in labelled_segments(rendered.input_ids, rendered.labels)]
    assert trained == [f"4{end}", TEMPLATES[name][1].format(r="Three and three.", a="6")]


def test_template_reasoning_styles(template):
    name, tokenizer = template
    markers = template_markers(tokenizer)
    assert markers.reasoning == {"qwq": "content", "r1-distill": "prompt", "r1-0528": "prompt", "qwen3": "field"}[name]
    assert markers.think_on == ("<think>\n" if name in ("qwq", "r1-distill") else "")
    assert markers.header == {"qwen3": "<|im_start|>assistant\n", "qwq": "<|im_start|>assistant\n"}.get(
        name, "<｜Assistant｜>"
    )
