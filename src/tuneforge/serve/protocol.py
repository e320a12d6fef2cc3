"""The OpenAI request bodies the built-in server accepts, their limits, and their translation to engine calls.

Fields the engine cannot honour are accepted and ignored (as vLLM does), except where ignoring them would
change the answer's meaning (n > 1, a forced tool choice): those are refused with 400. Every sampling value
is range-checked here, so a value the sampler cannot take is a 400, never a 500 from inside the model loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.data.conversation import Message, ToolCall
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.structured import parse_response_format

# torch.Generator.manual_seed takes a 64-bit integer; vLLM bounds `seed` the same way.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the built-in server (`tuneforge serve` flags, named as vLLM's where it has one)."""

    trust_request_chat_template: bool = False  # a request's own chat_template runs arbitrary Jinja: off by default
    max_tokens_default: int = 2048  # max_tokens when a request sets none (never beyond the context end)
    max_queued_requests: int = 128  # requests waiting for a place in the batch; more are answered 429
    max_num_seqs: int = 32  # requests generated together in one batch


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    n: Literal[1] = Field(1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = Field(
        None, description="text, json_object or json_schema: the answer is decoded to match (infer/structured.py)."
    )

    def sampling(self) -> SamplingParams:
        """The engine's sampling parameters for this request (a bad response_format is a UserError)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return SamplingParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(stop),
            response_format=parse_response_format(self.response_format),
        )

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionCallIn(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_message(self) -> Message:
        """The engine's Message (developer counts as system; text parts are joined)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        calls = [ToolCall(c.function.name, c.function.arguments) for c in self.tool_calls or []]
        role = "system" if self.role == "developer" else self.role
        return Message(role, content, reasoning=self.reasoning_content, tool_calls=calls)


class ChatRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto"] | None = Field(None, description="Forced tool choices are not supported.")
    chat_template: str | None = Field(None, description="Refused unless the server trusts request templates.")
    chat_template_kwargs: dict[str, Any] | None = None

    def custom_template(self) -> str | None:
        """The request's own chat template, given as `chat_template` or inside `chat_template_kwargs` (None if none)."""
        return self.chat_template or (self.chat_template_kwargs or {}).get("chat_template")


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="One prompt (a list holding one string is accepted too)."
    )

    def text(self) -> str:
        """The one prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
