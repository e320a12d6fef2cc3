"""The training method on the base model: LoRA adapters (peft) on a 16-bit or quantized base, or full fine-tuning."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import MethodConfig, ModelConfig, not_found
from tuneforge.errors import UserError, unreadable

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


def is_quantized(model) -> bool:
    """True when the model's weights were loaded through a transformers quantizer (bitsandbytes here)."""
    return getattr(model, "hf_quantizer", None) is not None


def continued_adapter(path: str) -> Path:
    """The LoRA adapter folder `method.adapter` names: the folder itself, or a finished LoRA run's adapter/."""
    from tuneforge.rundir import Run

    folder = Path(path).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder
    if (folder / "config.yaml").is_file():
        adapter = Run(folder).adapter
        if (adapter / "adapter_config.json").is_file():
            return adapter
        raise UserError(
            f"method.adapter: {path} is a run folder without adapter/adapter_config.json (not finished, or not a "
            "LoRA run); finish it (train.resume=auto) or name a LoRA adapter folder"
        )
    if not folder.exists():
        raise UserError(not_found("method.adapter", path))
    raise UserError(
        f"method.adapter: {path} is neither a LoRA adapter folder (no adapter_config.json) nor a run folder "
        "(no config.yaml); name the output.dir of a LoRA run or its adapter/ folder"
    )


def apply_method(model, method: MethodConfig, log: Callable = print):
    """Wrap the model for the chosen method and report how many parameters will train."""
    if method.type == "full":
        model.requires_grad_(True)
    elif method.adapter is not None:
        from peft import PeftModel

        adapter = continued_adapter(method.adapter)
        trained_on = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        log(f"method.adapter: continuing {adapter} (trained on {trained_on.get('base_model_name_or_path')})")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        from peft import LoraConfig, get_peft_model

        # A quantized base needs no more preparation than freezing, which get_peft_model does. peft's
        # prepare_model_for_kbit_training would also copy every 16-bit weight (embeddings, lm_head, norms)
        # to fp32: +5 GB on Qwen3-8B for nothing under bf16/fp16 autocast; and gradient checkpointing runs
        # non-reentrant (train/run.py), so the inputs need no requires_grad hook either.
        lora = LoraConfig(
            r=method.rank,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=lora_targets(model, method.target_modules),
            use_rslora=method.use_rslora,
            use_dora=method.use_dora,
            modules_to_save=method.modules_to_save,
            task_type="CAUSAL_LM",
        )
        # autocast_adapter_dtype (peft's default) keeps the LoRA weights in fp32 on a bf16 / fp16 base.
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    name = "qlora" if method.type != "full" and is_quantized(model) else method.type
    log(f"method {name}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
    return model


def lora_targets(model: nn.Module, targets: str | list[str]) -> str | list[str]:
    """method.target_modules as peft gets it: on a mixture of experts, all-linear means the attention's layers.

    peft >= 0.18 widens all-linear on a transformers-5 MoE to what it meant on transformers 4: every expert's
    gate/up/down (fused 3-D parameters, wrapped through target_parameters) and the router. That trains ~70x
    more LoRA parameters on Qwen3-30B-A3B, rebuilds every expert's delta weight in each forward, changes the
    routing, and gives adapters vLLM cannot load; tuneforge trains the attention only (docs/methods.md).
    """
    if targets != "all-linear" or not getattr(model.config, "num_experts", None):
        return targets
    import torch

    head = model.get_output_embeddings()
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m) is torch.nn.Linear and m is not head}
    )


def check_method(model_cfg: ModelConfig, method: MethodConfig) -> None:
    """Before any weights load: config.json makes a causal LM, and each method.target_modules entry matches a module."""
    from tuneforge.model.load import model_skeleton

    skeleton = model_skeleton(model_cfg)  # raises for a missing config.json or a non-causal model
    if method.adapter is not None and method.type != "full":
        check_adapter_fits(skeleton, continued_adapter(method.adapter), model_cfg.name_or_path)
        return  # the adapter brings its own target modules
    if method.type == "full" or method.target_modules == "all-linear":
        return
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    # Only layers LoRA wraps count: a name that matches a MoE's experts or router module only (fused 3-D
    # parameters, see lora_targets) would fail inside peft with a traceback.
    names = [name for name, m in skeleton.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    # peft's own matching: a string is one regular expression matched whole; list entries match name suffixes.
    targets = method.target_modules
    configs = (
        {targets: LoraConfig(target_modules=targets)}
        if isinstance(targets, str)
        else {entry: LoraConfig(target_modules=[entry]) for entry in targets}
    )
    unmatched = [
        entry for entry, lora in configs.items() if not any(check_target_module_exists(lora, n) for n in names)
    ]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)})
        experts = (
            " (a mixture of experts: LoRA trains its attention only)"
            if getattr(skeleton.config, "num_experts", None)
            else ""
        )
        raise UserError(
            f"method.target_modules: {', '.join(map(repr, unmatched))} matches no linear layer of "
            f"{type(skeleton).__name__}; its linear layers are {', '.join(linear)}{experts} (or use all-linear)"
        )


def check_adapter_fits(model: PreTrainedModel, adapter: Path, base_name: str) -> None:
    """Every adapter tensor must land on a base module of the right shape (merge and a continued adapter check it).

    peft raises a wall of text on shape mismatches and silently skips tensors whose module is missing
    (an adapter from a deeper model), so we check first and say it in one line.
    """
    from safetensors import SafetensorError, safe_open

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{adapter}: no adapter_model.safetensors")
    problems = []
    fix = "copy the adapter again, or train it again"
    with unreadable(weights, "safetensors file", fix, SafetensorError), safe_open(weights, "pt") as f:
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
