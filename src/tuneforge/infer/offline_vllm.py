"""`tuneforge eval --engine vllm`: generation through vLLM's offline `LLM`, LoRA adapters through `enable_lora`.

A `ChatBackend` that only generates (`can_score` is False: likelihood tasks are refused before it loads, as for
an endpoint). Prompts are rendered by the same chat template code as the built-in engine (`Engine.render`), so
samples.jsonl shows the exact text vLLM was given. Also the LoRA rank vLLM is asked to hold, for this engine and
`tuneforge serve --engine vllm`. Not run by the test suite (no vLLM, no GPU there); only its missing-vLLM error
is tested.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatResult, GenerationOnly, SamplingParams, model_per_item

if TYPE_CHECKING:
    from tuneforge.data.conversation import Message
    from tuneforge.infer.spec import ModelSpec

# vLLM sizes its LoRA buffers for --max-lora-rank (default 16) and accepts only these values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16


def lora_rank(adapter: Path) -> int:
    """The largest LoRA rank in an adapter (its `r`, or a larger one from `rank_pattern`)."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    return max([int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def max_lora_rank(adapters: Iterable[Path]) -> int:
    """vLLM's max LoRA rank for these adapters: their largest rank, rounded up to a value vLLM accepts."""
    rank = max(lora_rank(path) for path in adapters)
    return min((r for r in VLLM_LORA_RANKS if r >= rank), default=rank)


def require_vllm() -> None:
    """One line when vLLM is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "--engine vllm: vllm is not installed in this environment (pip install vllm, on Linux with an NVIDIA "
            "GPU); use --engine transformers, or serve the model with vLLM and pass --endpoint URL"
        )


class VllmEngine(GenerationOnly):
    """A vLLM `LLM` serving a base and its LoRA adapters under the spec's names (generation only)."""

    no_scores = "--engine vllm: only generation runs through vLLM here; use --engine transformers to score"

    def __init__(self, spec: ModelSpec) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from tuneforge.infer.engine import Engine
        from tuneforge.model.load import load_tokenizer

        if spec.others:
            raise UserError(
                "--engine vllm: a full fine-tune and its base are two models and vLLM loads one; pass --baseline none, "
                "or evaluate each through `tuneforge serve --engine vllm` and --endpoint"
            )
        self.models = dict.fromkeys(spec.names)
        self.tokenizer = load_tokenizer(spec.tokenizer)
        # The built-in engine's render (the tokenizer's own template); it never generates here.
        self._templates = Engine(self.tokenizer, self.models, source=None, max_model_len=0)  # type: ignore[arg-type]
        options: dict[str, Any] = {"tokenizer": spec.tokenizer.name_or_path, "revision": spec.model.revision}
        if spec.adapters:
            options |= {
                "enable_lora": True,
                "max_loras": len(spec.adapters),
                "max_lora_rank": max_lora_rank(spec.adapters.values()),
            }
        if spec.quantize is not None:  # a QLoRA run's base, quantized while it loads as in training
            options["quantization"] = "bitsandbytes"
        self._llm = LLM(model=spec.model.name_or_path, **options)
        self._lora = {name: LoRARequest(name, k + 1, str(path)) for k, (name, path) in enumerate(spec.adapters.items())}

    @property
    def names(self) -> list[str]:
        """Served names: the base first, then its adapters."""
        return list(self.models)

    def render(self, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> str:
        """The prompt text, from the tokenizer's own chat template."""
        return self._templates.render(messages, enable_thinking=enable_thinking)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> list[ChatResult]:
        """Answer every conversation in one vLLM call (it batches and schedules); input order."""
        import vllm

        from tuneforge.infer.parse import split_output

        params = params or SamplingParams()
        if params.response_format is not None:
            # vLLM's own structured outputs could take it (StructuredOutputsParams); not wired up or tested here.
            raise UserError("response_format: the offline vLLM engine does not take it; use `tuneforge serve`")
        names = model_per_item(model, len(conversations), self.names[-1])
        sampling = vllm.SamplingParams(
            temperature=params.temperature or 0.0,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        prompts = [self.render(conv, enable_thinking=enable_thinking) for conv in conversations]
        # The template already wrote every special token the model needs.
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = self._llm.generate(inputs, sampling, lora_request=[self._lora.get(name) for name in names])
        # The built-in engine's reasoning split (infer/parse.py), so a reply's shape does not depend on the engine.
        splits = [split_output(prompt, out.outputs[0].text) for prompt, out in zip(prompts, outputs, strict=True)]
        return [
            ChatResult(
                reasoning=reasoning,
                content=content,
                tool_calls=[],
                finish_reason=out.outputs[0].finish_reason or "stop",
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(out.outputs[0].token_ids),
            )
            for out, (reasoning, content) in zip(outputs, splits, strict=True)
        ]

    def close(self) -> None:
        """Nothing to stop here: vLLM's engine goes with this object."""


def load_vllm(spec: ModelSpec) -> VllmEngine:
    """The spec's models in vLLM, or one line when vLLM is not installed."""
    require_vllm()
    return VllmEngine(spec)
