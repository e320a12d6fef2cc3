"""What every model backend answers, and the values they exchange: the one way eval, chat and synth reach a model.

Five backends answer it: the local engine (infer/engine.py), vLLM's offline engine (infer/offline_vllm.py),
an OpenAI-compatible server and a router over several backends (infer/remote.py), and worker processes
(infer/shard.py). Callers type against `ChatBackend` and ask `can_score` before they need log-probabilities.
This module imports nothing heavy: a caller that only types against a backend loads no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tuneforge.data.conversation import Message, ToolCall
from tuneforge.errors import UserError


@dataclass(frozen=True)
class ResponseFormat:
    """OpenAI's `response_format`: the answer must be JSON, matching `schema` (JSON text) where one is given."""

    schema: str | None = None  # None: any JSON object ({"type": "json_object"})
    name: str = "response"  # the json_schema's name (a server may show it; the local engine does not need it)


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are picked; None takes the model's generation_config.json value (greedy if it has none)."""

    max_new_tokens: int | None = None  # None: up to the end of the context
    temperature: float | None = None  # 0 is greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: off
    seed: int | None = None  # fixes sampling for this request alone
    stop: tuple[str, ...] = ()  # the output ends before the first of these
    response_format: ResponseFormat | None = None  # constrained decoding of the answer (infer/structured.py)


@dataclass
class ChatResult:
    """A finished generation: reasoning (None when there was no think block), answer, tool calls, counts."""

    reasoning: str | None
    content: str
    tool_calls: list[ToolCall]
    finish_reason: str  # stop | length | tool_calls | abort
    prompt_tokens: int
    completion_tokens: int

    def to_message(self) -> Message:
        """The assistant turn to append to the conversation."""
        return Message("assistant", self.content, reasoning=self.reasoning, tool_calls=list(self.tool_calls))


@runtime_checkable
class ChatBackend(Protocol):
    """Served models that answer conversations in batches and, where `can_score`, give log-probabilities.

    `model` names a served model (default: the last of `names`, i.e. the fine-tuned one), or one per item.
    A backend that cannot score raises UserError from `score_ids` and `next_token_logprobs`.
    """

    tokenizer: Any  # the tokenizer prompts are rendered with; None where a server renders them

    @property
    def names(self) -> list[str]:
        """Served model names: the base first, then the fine-tuned ones."""
        ...

    @property
    def can_score(self) -> bool:
        """Whether `score_ids` and `next_token_logprobs` can answer (a chat API gives no given-token log-probs)."""
        ...

    def render(self, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> str:
        """The prompt as this backend sends it (the template's text; for a server, the messages as JSON)."""
        ...

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> list[ChatResult]:
        """An answer to every conversation, in input order."""
        ...

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], *, model: str | None = None) -> list[list[float]]:
        """The log-probability of each continuation token after its prompt, for (prompt ids, continuation ids)."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, model: str | None = None
    ) -> list[list[float]]:
        """The log-probability of each one-token candidate right after each raw-text prompt."""
        ...

    def close(self) -> None:
        """Free what the backend started (worker processes, the batcher thread, connections)."""
        ...


class GenerationOnly:
    """The scoring half of a backend that only generates: `can_score` is False, and scoring raises one line."""

    can_score = False
    no_scores: str  # the line: which backend, and that it gives no log-probabilities

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], *, model: str | None = None) -> list[list[float]]:
        """Refused: callers check `can_score` before they need log-probabilities."""
        raise UserError(self.no_scores)

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, model: str | None = None
    ) -> list[list[float]]:
        """Refused: callers check `can_score` before they need log-probabilities."""
        raise UserError(self.no_scores)


def model_per_item(model: str | Sequence[str] | None, count: int, default: str | None = None) -> list[str | None]:
    """The served model of each of `count` items: one name (or `default`) for all, or one name per item."""
    return [model or default] * count if model is None or isinstance(model, str) else list(model)
