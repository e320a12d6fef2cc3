"""LLaMA-Factory's qwen3 / qwen3_nothink templates as text, to compare with tuneforge's rendering in import reports.

tuneforge renders with the model's own chat template; this module exists only to say where LLaMA-Factory's
re-typed copy would train on different text. The slot strings are those of `register_template(name="qwen3")`
and `"qwen3_nothink"` in llamafactory/data/template.py, and the empty-thought rules of its ReasoningTemplate
(encode_multiturn), at the commit named in tests/data/llamafactory/NOTICE.
"""

from __future__ import annotations

from tuneforge.data.conversation import Conversation
from tuneforge.data.render import with_think_block

TEMPLATES = ("qwen3", "qwen3_nothink")
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


def lf_text(conv: Conversation, template: str, enable_thinking: bool = True) -> tuple[str, str] | None:
    """(whole text, trained text) as LLaMA-Factory renders `conv`, or None where it is not compared (tools)."""
    if conv.tools or any(m.tool_calls or m.role == "tool" for m in conv.messages):
        return None
    text, trained = "", ""
    for message in conv.messages:
        if message.role == "system":
            text += f"<|im_start|>system\n{message.content}<|im_end|>\n"
        elif message.role == "user":
            text += f"<|im_start|>user\n{message.content}<|im_end|>\n<|im_start|>assistant\n"
        else:
            reasoning = None if template == "qwen3" and not enable_thinking else message.reasoning
            answer = with_think_block(reasoning, message.content) if reasoning is not None else message.content
            if template == "qwen3" and reasoning is None:
                if enable_thinking:
                    answer = EMPTY_THOUGHT + answer  # trained, as ReasoningTemplate does with thinking on
                else:
                    text += EMPTY_THOUGHT  # prompt side, not trained
            response = f"{answer}<|im_end|>\n"
            text += response
            trained += response
    return text, trained
