"""What a checkpoint's own config.json adds to the memory estimate: its quantization, and a mixture of experts.

- `quantization_config` (a pre-quantized checkpoint, e.g. unsloth's dynamic 4-bit ones): bitsandbytes 4 / 8 bit
  with the layers it keeps 16-bit (`llm_int8_skip_modules`, matched by transformers' own rule). Such a base loads
  as saved whatever method.type says (model/quant.py), so LoRA on it is QLoRA. Other methods (GPTQ, AWQ, FP8)
  are refused, as training refuses them.
- Qwen3-MoE (`num_experts`): every expert's weights are resident; per token only `num_experts_per_tok` experts run,
  so activations count those. LoRA (and bitsandbytes) reach the attention's nn.Linear layers only: transformers 5
  keeps the experts as fused 3-D tensors and the router as its own module, which neither wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.errors import UserError

# Where each linear layer of a Qwen3 decoder layer sits, for matching llm_int8_skip_modules against module names.
GROUPS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}  # fmt: skip


@dataclass(frozen=True)
class SavedQuantization:
    """A bitsandbytes checkpoint's settings, as memory depends on them."""

    bits: int
    quant_type: str
    double_quant: bool
    skip: tuple[str, ...]  # llm_int8_skip_modules


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts MLP: how many experts, how many run per token, and each one's intermediate size."""

    count: int
    active: int
    intermediate: int


def saved_quantization(get: Any, source: str) -> SavedQuantization | None:
    """The checkpoint's quantization (`get`: config.json's key getter), None for 16 bit; non-bitsandbytes refused."""
    saved = get("quantization_config")
    if saved is None:
        return None
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    kind = saved.get("quant_method")
    if kind != "bitsandbytes":
        raise UserError(
            f"model.name_or_path: {source} is quantized with {kind}, which tuneforge neither trains nor estimates; "
            "estimate its 16-bit original with --method qlora"
        )
    four_bit = bool(saved.get("load_in_4bit") or saved.get("_load_in_4bit"))
    return SavedQuantization(
        bits=4 if four_bit else 8,
        quant_type=saved.get("bnb_4bit_quant_type") or "fp4",  # bitsandbytes' default
        double_quant=bool(saved.get("bnb_4bit_use_double_quant")),
        skip=tuple(saved.get("llm_int8_skip_modules") or ()),
    )


def experts(get: Any) -> Experts | None:
    """The mixture of experts of a Qwen3-MoE config (None for a dense model)."""
    # Qwen's own config.json says num_experts; transformers 5 saves the same count as num_local_experts.
    count = get("num_experts") or get("num_local_experts")
    if not count:
        return None
    return Experts(count, get("num_experts_per_tok"), get("moe_intermediate_size"))


def skipped(name: str, layer: int, skip: tuple[str, ...]) -> bool:
    """Whether linear layer `name` of decoder layer `layer` stays 16-bit under llm_int8_skip_modules `skip`."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(f"model.layers.{layer}.{GROUPS[name]}.{name}", list(skip))
