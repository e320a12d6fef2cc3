"""bitsandbytes quantization of the base model: what QLoRA loads, pre-quantized checkpoints, the bytes it saves.

Two ways a base ends up quantized, one plan for both:

- `method.type: qlora`: the 16-bit checkpoint is quantized while it loads (`QuantPlan.config`);
- a pre-quantized checkpoint (a bitsandbytes `quantization_config` in its config.json, as the "dynamic 4-bit"
  checkpoints have, with `llm_int8_skip_modules` naming layers kept 16-bit) loads as it is saved, and any
  LoRA on it is QLoRA.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

# Below this share of decoder weights in layers bitsandbytes can replace, "4-bit" would mostly stay 16-bit.
MIN_QUANTIZABLE_SHARE = 0.5


@dataclass(frozen=True)
class QuantPlan:
    """How the base is quantized: while loading (`config` set) or already in the checkpoint (`config` None)."""

    bits: int
    detail: str  # 4-bit: quant type and double quant, e.g. "nf4, double quant"
    config: BitsAndBytesConfig | None

    @property
    def prequantized(self) -> bool:
        """True when the checkpoint itself holds the quantized weights."""
        return self.config is None

    def describe(self) -> str:
        """A few words for logs, e.g. 'bitsandbytes 4-bit nf4, double quant'."""
        return f"bitsandbytes {self.bits}-bit" + (f" {self.detail}" if self.detail else "")


def _detail(quant_type: str | None, double_quant: bool) -> str:
    return f"{quant_type or 'fp4'}" + (", double quant" if double_quant else "")  # fp4: bitsandbytes' default


def require_bitsandbytes(key: str) -> None:
    """Fail with the install command when bitsandbytes is missing; `key` names the config value needing it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{key} needs bitsandbytes: pip install 'tuneforge[qlora]'")


def bnb_config(method: MethodConfig, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The BitsAndBytesConfig for `method` (qlora); the compute dtype follows model.dtype."""
    import torch
    from transformers import BitsAndBytesConfig

    if method.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    storages = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant_type,
        bnb_4bit_use_double_quant=method.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype if method.quant_storage == "auto" else storages[method.quant_storage],
    )


def saved_quantization(config: PretrainedConfig) -> dict[str, Any] | None:
    """The quantization_config a checkpoint's config.json carries, as a dict (None for a 16-bit checkpoint)."""
    saved = getattr(config, "quantization_config", None)
    if saved is None or isinstance(saved, dict):
        return saved
    return saved.to_dict()


def plan_quantization(
    config: PretrainedConfig,
    model: ModelConfig,
    method: MethodConfig | None,
    compute_dtype: torch.dtype,
    log: Callable = print,
) -> QuantPlan | None:
    """Decide how the base is quantized (None: it is not), saying so where the config is read differently.

    `method` None (inference) quantizes nothing itself: a QLoRA adapter then runs on the 16-bit base.
    """
    saved = saved_quantization(config)
    if saved is not None:
        return _prequantized_plan(saved, method, model.name_or_path, log)
    if method is None or method.type != "qlora":
        return None
    require_bitsandbytes("method.type: qlora")
    check_quantizable(config, model.trust_remote_code)
    unused = sorted(method.model_fields_set & {"quant_type", "double_quant", "quant_storage"})
    if method.bits == 8 and unused:
        log(f"method.bits: 8 (LLM.int8): 4-bit settings not used: {', '.join(f'method.{k}' for k in unused)}")
    detail = _detail(method.quant_type, method.double_quant) if method.bits == 4 else ""
    return QuantPlan(method.bits, detail, bnb_config(method, compute_dtype))


def _prequantized_plan(saved: dict[str, Any], method: MethodConfig | None, source: str, log: Callable) -> QuantPlan:
    kind = saved.get("quant_method")
    if kind != "bitsandbytes":
        raise UserError(
            f"model.name_or_path: {source} is quantized with {kind}; tuneforge trains on bitsandbytes-quantized "
            "or 16-bit checkpoints: use the 16-bit original with method.type: qlora"
        )
    if method is not None and method.type == "full":
        raise UserError(
            f"method.type: full cannot train {source}: its weights are quantized (bitsandbytes); "
            "use method.type: lora (trained as QLoRA) or the 16-bit original"
        )
    require_bitsandbytes(f"model.name_or_path: {source} (pre-quantized with bitsandbytes)")
    four_bit = bool(saved.get("load_in_4bit") or saved.get("_load_in_4bit"))
    detail = _detail(saved.get("bnb_4bit_quant_type"), bool(saved.get("bnb_4bit_use_double_quant"))) if four_bit else ""
    plan = QuantPlan(4 if four_bit else 8, detail, None)
    if method is None:
        return plan
    if method.type == "lora":
        log(f"{source} is pre-quantized ({plan.describe()}): method.type lora trains it as QLoRA")
    else:
        log(
            f"{source} is pre-quantized ({plan.describe()}): loaded as saved; method.bits, quant_type, "
            "double_quant and quant_storage are not applied"
        )
    return plan


def quantizable_share(model: PreTrainedModel) -> float:
    """Share of the weights outside the embeddings that sit in layers bitsandbytes replaces (nn.Linear, Conv1D)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    skip = {id(p) for module in embeddings if module is not None for p in module.parameters()}
    total = replaced = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in skip:
                continue
            skip.add(id(param))  # tied weights count once
            total += param.numel()
            if type(module) is torch.nn.Linear or isinstance(module, Conv1D):
                replaced += param.numel()
    return replaced / total if total else 0.0


def check_quantizable(config: PretrainedConfig, trust_remote_code: bool = False) -> None:
    """Refuse model types whose weights mostly sit where bitsandbytes cannot quantize them (e.g. fused MoE experts)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    share = quantizable_share(skeleton)
    if share < MIN_QUANTIZABLE_SHARE:
        raise UserError(
            f"method.type: qlora: bitsandbytes quantizes linear layers only, which hold {share:.0%} of the weights "
            f"of model type '{config.model_type}' (the rest, e.g. fused MoE experts, would stay 16-bit); "
            "use method.type: lora"
        )


@dataclass(frozen=True)
class QuantBytes:
    """Bytes of the quantized linear layers (weights + quantization state) against the same weights in bf16."""

    layers: int
    quantized: int
    bf16: int

    @property
    def ratio(self) -> float:
        """quantized / bf16 bytes."""
        return self.quantized / self.bf16 if self.bf16 else 0.0

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"{self.layers} quantized linear layers take {self.quantized / mib:,.1f} MiB, "
            f"{self.ratio:.3f} × their {self.bf16 / mib:,.1f} MiB in bf16"
        )


def quantized_bytes(model: PreTrainedModel) -> QuantBytes:
    """Measure the bitsandbytes layers of `model`: every tensor they would save, against 2 bytes per weight."""
    import bitsandbytes as bnb

    layers = quantized = weights = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state.as_dict(packed=True).values()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            state = [module.weight.SCB]
        else:
            continue
        layers += 1
        quantized += _nbytes(module.weight) + sum(_nbytes(t) for t in state)
        weights += module.in_features * module.out_features
    return QuantBytes(layers, quantized, 2 * weights)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
