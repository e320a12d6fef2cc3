"""Merge a LoRA adapter into its 16-bit base and save a plain Hugging Face model (for vLLM, GGUF, anything).

The merged folder holds sharded safetensors, the run's tokenizer with its chat template, and a generation
config that stops at the end-of-turn token. Before saving, the merged model's logits are compared with the
adapter's own (base + adapter, unmerged) on a few chat prompts, so the user sees what the merge cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import ModelConfig
from tuneforge.errors import UserError
from tuneforge.export import interrupt_as_user_error, refuse_existing
from tuneforge.io import atomic_dir
from tuneforge.rundir import RunDir

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MERGE_DTYPES = ("bf16", "fp16", "fp32")
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
    max_logit_diff: float

    def summary(self) -> str:
        """One line for the user: where, and what the merge cost."""
        return (
            f"merged into {self.out} ({self.dtype}); largest logit difference from the adapter's own outputs "
            f"on {len(CHECK_PROMPTS)} chat prompts: {self.max_logit_diff:.3g}"
        )


def run_sources(run: Path) -> tuple[ModelConfig, Path]:
    """The base model config and adapter folder of a LoRA run folder."""
    rundir = RunDir(run)
    if rundir.model.is_dir() and not rundir.adapter.is_dir():
        raise UserError(f"{run} is a full fine-tune: {rundir.model} is already a complete model, nothing to merge")
    if not (rundir.adapter / "adapter_config.json").is_file():
        raise UserError(f"{run}: no adapter/adapter_config.json (has the run finished?)")
    return rundir.base_model_config(), rundir.adapter


def merge_adapter(
    base: ModelConfig, adapter: Path, out: Path, dtype: str = "bf16", force: bool = False
) -> MergeReport:
    """Merge `adapter` into the `base` model and save it to `out` (atomically) in `dtype`."""
    import torch
    from peft import PeftModel

    from tuneforge.model.load import load_model, load_tokenizer

    if dtype not in MERGE_DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(MERGE_DTYPES)}")
    refuse_existing(out, force)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json (expected a peft LoRA adapter folder)")
    model = load_model(base.model_copy(update={"dtype": dtype}))
    _check_adapter_fits(model, adapter, base.name_or_path)
    # The run saved its tokenizer beside the adapter (pad token, template); prefer it over the base's.
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(base.model_copy(update={"tokenizer": str(adapter)}) if has_tokenizer else base)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()

    prompts = [_chat_prompt(tokenizer, text) for text in CHECK_PROMPTS]
    with torch.no_grad():
        reference = [model(ids).logits.float() for ids in prompts]
        merged = model.merge_and_unload()
        diff = max((merged(ids).logits.float() - ref).abs().max().item() for ids, ref in zip(prompts, reference))

    _stop_at_end_of_turn(merged, tokenizer)
    with interrupt_as_user_error(out), atomic_dir(out, overwrite=force) as tmp:
        merged.save_pretrained(tmp, max_shard_size="2GB")
        tokenizer.save_pretrained(tmp)
    return MergeReport(out=out, dtype=dtype, max_logit_diff=diff)


def _check_adapter_fits(model: PreTrainedModel, adapter: Path, base_name: str) -> None:
    """Every adapter tensor must land on a base module of the right shape.

    peft raises a wall of text on shape mismatches and silently skips tensors whose module is missing
    (an adapter from a deeper model), so we check first and say it in one line.
    """
    from safetensors import safe_open

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{adapter}: no adapter_model.safetensors")
    problems = []
    with safe_open(weights, "pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has keys() but is not iterable
            name = key.removeprefix("base_model.model.")
            shape = tuple(f.get_slice(key).get_shape())
            expected = _expected_shape(model, name, shape)
            if expected != shape:
                problems.append(f"{name} is {shape}, the base needs {expected}" if expected else f"{name} has no place")
    if problems:
        trained_on = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(
            f"{adapter}: this adapter was trained for a different base than {base_name} "
            f"(it names {trained_on}): {problems[0]}{more}"
        )


def _expected_shape(model: PreTrainedModel, name: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape `name` must have to fit `model`, or None where the model has no such module."""
    module_path, lora, rest = name.partition(".lora_")
    if not lora:  # a module trained in full beside LoRA (modules_to_save)
        param = dict(model.named_parameters()).get(name)
        return None if param is None else tuple(param.shape)
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return None
    fan_in, fan_out = _fans(module)
    kind = rest.split(".")[0]  # A, B, embedding_A, embedding_B, magnitude_vector (DoRA)
    if kind.endswith("A"):
        return (shape[0], fan_in)
    if kind.endswith("B"):
        return (fan_out, shape[1])
    return (fan_out,)


def _fans(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings, module.embedding_dim
    return module.in_features, module.out_features


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
