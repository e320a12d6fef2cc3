"""Merge a LoRA adapter into its base and save a plain Hugging Face model (for vLLM, GGUF, anything).

The merged folder holds sharded safetensors, the run's tokenizer with its chat template, and a generation
config that stops at the end-of-turn token. Before saving, the merged model's logits are compared with the
adapter's own (the adapter on the base it trained on, unmerged) on a few chat prompts, so the user sees what
the merge cost; a merge farther than its bound (MERGE_RTOL) from what it must equal is refused, nothing written.

A QLoRA adapter trained on quantized weights, so neither merge is exact: onto the 16-bit base (`16bit`, the
default: the weights the quantized ones approximate) or onto the dequantized quantized weights (`dequantized`:
what the adapter actually saw). Both are measured and reported; the chosen one is saved. A pre-quantized base
has no 16-bit weights, so its adapters merge onto the dequantized ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.errors import UserError
from tuneforge.export import MERGE_DTYPES, ONTO, interrupt_as_user_error, refuse_existing
from tuneforge.io import atomic_dir
from tuneforge.model.adapters import check_adapter_fits
from tuneforge.rundir import Run

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# How far a merged model's logits may be from what they must equal, as a share of the largest logit (so the
# bound holds for any model size): the merge dtype's rounding of the summed weights, measured at 1.5e-6 (fp32),
# 3e-3 (fp16) and 2.2e-2 (bf16) on the tiny test model.
MERGE_RTOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-1}
# An 8-bit base merged onto its dequantized weights: LLM.int8 also rounds the activations, which no merged
# weight copies (measured 0.034-0.049 on the tiny test model, in every dtype).
INT8_DEQUANTIZED_RTOL = 0.25
# Chat prompts in the languages and styles Qwen3 is used for; the logit check runs on each.
CHECK_PROMPTS = (
    "Hello! Who are you?",
    "用一句话介绍一下长城。",
    "Write a Python function that reverses a string.",
)


@dataclass(frozen=True)
class MergeReport:
    """Where the merged model went, and how far its logits are from the adapter's."""

    out: Path
    dtype: str
    onto: str  # the base written: one of ONTO
    diffs: dict[str, float]  # largest logit difference from the adapter's outputs, per base merged onto

    @property
    def max_logit_diff(self) -> float:
        """The difference of the merge that was written."""
        return self.diffs[self.onto]

    def summary(self) -> str:
        """One line for the user: where, and what the merge cost (for QLoRA, on each base, to choose from)."""
        head = (
            f"merged into {self.out} ({self.dtype}); largest logit difference from the adapter's own outputs "
            f"on {len(CHECK_PROMPTS)} chat prompts: "
        )
        if list(self.diffs) == ["16bit"]:
            return head + f"{self.max_logit_diff:.3g}"
        written = {onto: " (written)" if onto == self.onto else "" for onto in self.diffs}
        return head + ", ".join(f"--onto {onto} {diff:.3g}{written[onto]}" for onto, diff in self.diffs.items())


def run_sources(run: Run | Path) -> tuple[ModelConfig, Path]:
    """The base model config and adapter folder of a LoRA run folder."""
    run = run if isinstance(run, Run) else Run.open(run)
    if run.model.is_dir() and not run.adapter.is_dir():
        raise UserError(f"{run.root} is a full fine-tune: {run.model} is already a complete model, nothing to merge")
    if not (run.adapter / "adapter_config.json").is_file():
        raise UserError(f"{run.root}: no adapter/adapter_config.json (has the run finished?)")
    return run.base_model_config(), run.adapter


def merge_adapter(
    base: ModelConfig,
    adapter: Path,
    out: Path,
    dtype: str = "bf16",
    force: bool = False,
    onto: str | None = None,
    log: Callable = print,
    method: MethodConfig | None = None,
) -> MergeReport:
    """Merge `adapter` into the `base` model and save it to `out` (atomically) in `dtype`.

    `onto` (QLoRA adapters): 16bit or dequantized; None picks `default_onto(base)`. `method`: the run's method
    (`Run.cfg`), which says how training quantized the base; None for an adapter without its run.
    """
    from peft import PeftModel

    from tuneforge.model.load import load_model, load_tokenizer, pick_dtype

    if dtype not in MERGE_DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(MERGE_DTYPES)}")
    if onto is not None and onto not in ONTO:
        raise UserError(f"--onto {onto}: expected one of {', '.join(ONTO)}")
    refuse_existing(out, force, folder=True)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json (expected a peft LoRA adapter folder)")
    base = base.model_copy(update={"dtype": dtype})
    # The run saved its tokenizer beside the adapter (pad token, template); prefer it over the base's.
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(base.model_copy(update={"tokenizer": str(adapter)}) if has_tokenizer else base)
    prompts = [_chat_prompt(tokenizer, text) for text in CHECK_PROMPTS]

    quant = _trained_quantization(method, adapter, onto, log)
    # The base exactly as the adapter saw it in training; on the CPU, like the 16-bit merge (a dequantized
    # 32B model would not fit the GPU that trained its QLoRA adapter).
    trained_on = load_model(base, quant, log=log, device="cpu")
    quantized = getattr(trained_on, "is_quantized", False)
    int8 = getattr(trained_on, "is_loaded_in_8bit", False)
    if onto == "dequantized" and not quantized:
        raise UserError(
            f"--onto dequantized: {adapter} was trained on a 16-bit base (LoRA, not QLoRA); "
            "there are no quantized weights to merge onto: leave --onto out"
        )
    # The checkpoint itself is quantized (whatever the run's method said): it has no 16-bit weights.
    prequantized = quantized and default_onto(base) == "dequantized"
    if onto == "16bit" and prequantized:
        raise UserError(
            f"--onto 16bit: the base {base.name_or_path} is pre-quantized and has no 16-bit weights; "
            "use --onto dequantized, or --model with its 16-bit original"
        )
    check_adapter_fits(trained_on, adapter, base.name_or_path)
    loaded = _packed_as_loaded(trained_on) if quantized else []  # before any forward: what dequantizing reads
    _compute_as_in_training(trained_on)
    adapted = PeftModel.from_pretrained(trained_on, str(adapter)).eval()
    reference = _logits(adapted, prompts)

    if not quantized:
        merged = adapted.merge_and_unload()
        onto, diffs, own = "16bit", {"16bit": _max_diff(merged, prompts, reference)}, None
    else:
        onto = onto or default_onto(base)
        quantized_base = adapted.unload()  # the quantized base without the adapter's layers
        del adapted, trained_on
        diffs = {}
        for name in sorted(ONTO if not prequantized else ["dequantized"], key=lambda name: name == onto):
            merged = None  # the candidate not chosen goes before the next is built: one 16-bit model at a time
            if name == "dequantized":  # in place, layer by layer: the quantized model becomes the 16-bit one
                model, quantized_base = _dequantize(quantized_base, loaded, pick_dtype(dtype)), None
            else:
                model = load_model(base, log=log)
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
            # The 16-bit merge's distance from the reference is the quantization error; its own exactness is
            # measured against the adapter unmerged on the same 16-bit weights.
            own = _logits(model, prompts) if name == onto == "16bit" else None
            merged, model = model.merge_and_unload(), None
            diffs[name] = _max_diff(merged, prompts, reference)

    # The chosen merge was built last: check it against what it must equal.
    if own is None:
        distance, against = diffs[onto], "the adapter's own outputs"
    else:
        distance, against = _max_diff(merged, prompts, own), "the adapter's outputs on the same 16-bit weights"
    rtol = INT8_DEQUANTIZED_RTOL if onto == "dequantized" and int8 else MERGE_RTOL[dtype]
    _check_bound(distance, rtol, against, reference, f"--onto {onto} --dtype {dtype}", [n for n in diffs if n != onto])
    _stop_at_end_of_turn(merged, tokenizer)
    with interrupt_as_user_error(out), atomic_dir(out, overwrite=force) as tmp:
        merged.save_pretrained(tmp, max_shard_size="2GB")
        tokenizer.save_pretrained(tmp)
    return MergeReport(out=out, dtype=dtype, onto=onto, diffs=dict(sorted(diffs.items())))


def default_onto(base: ModelConfig) -> str:
    """The base a merge without --onto writes: a pre-quantized checkpoint's dequantized weights, else the 16-bit.

    Reads config.json as it is, without load_model_config's checks: `export --run` asks before it checks every
    requirement at once. OSError where the base's config.json cannot be read.
    """
    from transformers import PreTrainedConfig

    from tuneforge.model.load import resolve_model_path

    config, _ = PreTrainedConfig.get_config_dict(
        resolve_model_path(base), revision=base.revision, cache_dir=base.cache_dir
    )  # fmt: skip
    return "dequantized" if config.get("quantization_config") is not None else "16bit"


def _trained_quantization(
    method: MethodConfig | None, adapter: Path, onto: str | None, log: Callable
) -> MethodConfig | None:
    """How training quantized the base (a qlora method), from the run's `method`; None: 16-bit.

    A pre-quantized base needs no method: it loads quantized as saved, and that is found from its config.
    """
    if method is not None:
        return method if method.type == "qlora" else None
    if onto == "dequantized":
        default = MethodConfig(type="qlora")
        log(
            f"{adapter} without its run: quantizing the base as method.type: qlora does by default "
            f"({default.bits}-bit {default.quant_type}, double quant {default.double_quant}); merge with --run RUN "
            "for the run's own settings"
        )
        return default
    return None


def _check_bound(
    distance: float, rtol: float, against: str, reference: list[torch.Tensor], merge: str, others: list[str]
) -> None:
    """Refuse a merge whose logits are more than `rtol` x the largest reference logit away from `against`."""
    scale = max(max(ref.abs().max().item() for ref in reference), 1.0)
    if not distance <= rtol * scale:  # written this way round, NaN is refused too
        retry = "".join(f"try --onto {other}, and " for other in others)
        raise UserError(
            f"{merge}: the merged model's logits are {distance:.3g} away from {against} (bound {rtol * scale:.3g}: "
            f"{rtol:g} x the largest logit), so the merge is wrong and nothing was written; {retry}report it with "
            "your torch, transformers, peft and bitsandbytes versions"
        )


def _packed_as_loaded(model: PreTrainedModel) -> list[tuple[nn.Module, torch.Tensor, object]]:
    """The packed weight and a copy of the quantization state of each 4-bit layer, as loaded (before any forward).

    Workaround for bitsandbytes 0.49-0.50 (issue 11): on a CPU with AVX-512 BF16 the first eval-mode no-grad
    forward of a Linear4bit repacks its weight for the bf16 kernel (a new tensor) and changes its quant_state
    in place (block scales rounded to bf16, double quant undone); transformers' dequantize() then reads the
    repacked bytes as the original layout. Keeping the loaded tensor (a reference, no copy) and a copy of the
    small state lets `_dequantize` start from the loaded weights whatever ran before. It can go when
    bitsandbytes stops repacking in place or dequantize_4bit reads its CPU packing format.
    """
    import bitsandbytes as bnb

    return [
        (module, module.weight.data, copy.deepcopy(module.weight.quant_state))
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
    ]


def _compute_as_in_training(model: PreTrainedModel) -> None:
    """Make the 4-bit layers compute as in training (dequantize, then matmul in the compute dtype) in eval mode too.

    bitsandbytes >= 0.49 otherwise runs eval-mode CPU forwards through its bf16 kernel on AVX-512 BF16 CPUs
    (repacking the weights first): bf16 rounding the merge check would count as merge error, and outputs the
    adapter never produced in training.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _dequantize(
    model: PreTrainedModel, loaded: list[tuple[nn.Module, torch.Tensor, object]], dtype: torch.dtype
) -> PreTrainedModel:
    """`model` with its 4-bit layers replaced by 16-bit ones dequantized from the weights `loaded` kept."""
    for module, data, state in loaded:
        module.weight.data, module.weight.quant_state = data, state
        if getattr(module, "quant_state", None) is not None:
            module.quant_state = state
    model = model.dequantize(dtype=dtype)
    _forget_quantized_loading(model)
    return model


def _forget_quantized_loading(model: PreTrainedModel) -> None:
    """Drop the record of how a pre-quantized checkpoint was deserialized, so the dequantized model saves plainly.

    transformers 5.x reverses its loading conversions on save; bitsandbytes' deserializer has no reverse
    (NotImplementedError), and once dequantized there is nothing left to reverse.
    """

    def reversible(conversion: object) -> bool:
        try:
            conversion.reverse_transform()
        except NotImplementedError:
            return False
        return True

    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if reversible(c)]


def _logits(model: nn.Module, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 logits of each prompt, on the CPU (so models on different devices compare)."""
    import torch

    with torch.no_grad():
        return [model(ids.to(model.device)).logits.float().cpu() for ids in prompts]


def _max_diff(model: nn.Module, prompts: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest absolute logit difference between `model` and the `reference` logits over all prompts."""
    return max((got - want).abs().max().item() for got, want in zip(_logits(model, prompts), reference))


def _chat_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    messages = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _stop_at_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make generation stop at the tokenizer's eos (<|im_end|>) as well as the model's own eos ids."""
    config = model.generation_config
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    config.eos_token_id = eos if len(eos) > 1 else eos[0]
    config.pad_token_id = tokenizer.pad_token_id
