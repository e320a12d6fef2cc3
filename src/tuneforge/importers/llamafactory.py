"""LLaMA-Factory training YAMLs (and `llamafactory-cli train --key value` scripts) → a tuneforge config mapping.

Every key of the source is reported: mapped, mapped with a note, or dropped with the reason and the nearest
tuneforge feature; a feature tuneforge lacks (pre-training, reward models, images) refuses the import in one line.
Key names and defaults are LLaMA-Factory's (src/llamafactory/hparams/*.py at the commit named in
tests/data/llamafactory/NOTICE) and transformers' TrainingArguments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneforge.importers.draft import (
    REPORT_TO,
    Draft,
    Rule,
    as_bool,
    as_list,
    drop,
    eval_steps,
    kto_batch,
    method_type,
    noted,
    off_only,
    to,
)
from tuneforge.importers.lf_datasets import read_dataset_info, resolve_dataset

OBJECTIVES = {"sft": "sft", "dpo": "dpo", "kto": "kto"}
REFUSED_STAGES = {
    "pt": "pre-training on raw text (tuneforge trains conversations; nearest: an alpaca dataset)",
    "rm": "reward-model training",
    "ppo": "PPO (nearest: method.objective dpo, orpo, simpo or kto)",
}
# pref_loss → (objective, dpo_loss)
PREF_LOSSES = {
    "sigmoid": ("dpo", None),
    "ipo": ("dpo", "ipo"),
    "hinge": ("dpo", "hinge"),
    "orpo": ("orpo", None),
    "simpo": ("simpo", None),
}
ATTENTION = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
TEXT_ONLY = "tuneforge trains text-only models"
# LLaMA-Factory template → what tuneforge's rendering with the model's own template does for it.
THINKING_TEMPLATES = ("qwen3", "qwen3_vl", "qwen3_omni")


def _stage(draft: Draft, key: str, value: Any) -> None:
    if value in REFUSED_STAGES:
        draft.report.refuse(key, value, REFUSED_STAGES[value])
    elif value in OBJECTIVES:
        # stage dpo trains the objective pref_loss names (orpo and simpo too), whichever key comes first
        loss = draft.args.get("pref_loss", "sigmoid")
        objective = PREF_LOSSES[loss][0] if value == "dpo" and loss in PREF_LOSSES else OBJECTIVES[value]
        draft.set("method.objective", objective)
        draft.report.add(key, value, "mapped", "method.objective")
    else:
        draft.report.refuse(key, value, "unknown stage (sft, dpo, kto are imported)")


def _pref_loss(draft: Draft, key: str, value: Any) -> None:
    if value not in PREF_LOSSES:
        draft.report.refuse(key, value, f"pref_loss {value} (tuneforge has {', '.join(PREF_LOSSES)})")
        return
    objective, loss = PREF_LOSSES[value]  # the objective is set with stage
    if loss:
        draft.set("method.dpo_loss", loss)
    draft.report.add(
        key, value, "mapped", f"method.objective: {objective}" + (f", method.dpo_loss: {loss}" if loss else "")
    )


def _quantization_bit(draft: Draft, key: str, value: Any) -> None:
    if int(value) not in (4, 8) or draft.args.get("finetuning_type", "lora") != "lora":
        draft.report.refuse(key, value, "quantization other than 4 or 8 bits, or without LoRA")
        return
    draft.set("method.bits", int(value))
    draft.set("method.type", "qlora")
    draft.report.add(key, value, "mapped", "method.type: qlora, method.bits")


def _lora_target(draft: Draft, key: str, value: Any) -> None:
    names = as_list(value)
    target = "all-linear" if names == ["all"] else names
    draft.set("method.target_modules", target)
    draft.report.add(
        key,
        value,
        "mapped",
        "method.target_modules",
        "LLaMA-Factory's all = every linear layer except the output head, as all-linear" if names == ["all"] else "",
    )


def _template(draft: Draft, key: str, value: Any) -> None:
    draft.report.lf_template = [value, as_bool(draft.args.get("enable_thinking", True))]
    own = "rendered with the model's own chat template (tokenizer_config.json), not LLaMA-Factory's re-typed copy"
    if value in THINKING_TEMPLATES:
        thinking = "keep_empty" if as_bool(draft.args.get("enable_thinking", True)) else "off"
        draft.set("data.thinking", thinking)
        draft.report.add(
            key,
            value,
            "noted",
            f"data.thinking: {thinking}",
            f"{own}; LLaMA-Factory's {value} "
            + (
                "trains an empty think block on answers without reasoning"
                if thinking == "keep_empty"
                else "removes every reasoning (enable_thinking: false)"
            ),
        )
    else:
        draft.report.add(
            key,
            value,
            "noted",
            "",
            own
            + (
                "; answers without reasoning get no think block in LLaMA-Factory, and the Qwen3 hybrid template's "
                "empty one on the prompt side (no loss) in tuneforge"
                if value.startswith("qwen3")
                else ""
            ),
        )


def _cutoff_len(draft: Draft, key: str, value: Any) -> None:
    draft.set("data.max_length", int(value))
    draft.set("data.truncation", "truncate")
    draft.report.add(
        key,
        value,
        "noted",
        "data.max_length, data.truncation: truncate",
        "LLaMA-Factory cuts prompt and answer in proportion to their lengths; tuneforge keeps the first "
        "max_length tokens (set data.truncation: drop to skip long samples instead)",
    )


def _dtype(draft: Draft, key: str, value: Any) -> None:
    if not as_bool(value):
        draft.report.add(key, value, "noted", "model.dtype", "off: model.dtype stays auto")
        return
    dtype = "fp16" if key == "fp16" else "auto"
    draft.set("model.dtype", dtype)
    draft.report.add(
        key,
        value,
        "noted",
        f"model.dtype: {dtype}",
        "auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU" if dtype == "auto" else "",
    )


def _deepspeed(draft: Draft, key: str, value: Any) -> None:
    path = _find(str(value), draft.report.source)
    preset, why = _deepspeed_preset(path, str(value))
    draft.set("distributed.strategy", "ddp" if preset == "ddp" else "deepspeed")
    if preset != "ddp":
        draft.set("distributed.deepspeed", preset)
    draft.report.add(
        key, value, "noted", "distributed.strategy" + ("" if preset == "ddp" else ", distributed.deepspeed"), why
    )


def _find(value: str, source: str) -> Path | None:
    """A path as LLaMA-Factory reads it (from its repository root, the cwd), or from a folder above the source."""
    candidates = [Path(value), *(parent / value for parent in Path(source).resolve().parents)]
    return next((p for p in candidates if p.is_file()), None)


def _deepspeed_preset(path: Path | None, value: str) -> tuple[str, str]:
    """The tuneforge preset equal to a LLaMA-Factory DeepSpeed JSON (stage and offload), or the file itself."""
    if path is None:
        return value, "file not found here; tuneforge reads it when the run starts"
    ds = json.loads(path.read_text(encoding="utf-8"))
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    offload = zero.get("offload_optimizer", {}).get("device") == "cpu"
    if stage == 0:
        return "ddp", "ZeRO stage 0 shards nothing: tuneforge's ddp"
    extras = sorted(
        set(ds)
        - {
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "gradient_clipping",
            "zero_allow_untested_optimizer",
            "fp16",
            "bf16",
            "zero_optimization",
        }
    )
    if stage in (2, 3) and not extras:
        preset = f"zero{stage}" + ("_offload" if offload else "")
        return (
            preset,
            f"{path.name}: ZeRO-{stage}{' with CPU offload' if offload else ''} = tuneforge's {preset} preset",
        )
    return str(path), f"{path.name} has {', '.join(extras) or f'stage {stage}'}: the file is passed to DeepSpeed as is"


def _timeout(draft: Draft, key: str, value: Any) -> None:
    draft.set("distributed.timeout_minutes", max(1, math.ceil(int(value) / 60)))
    draft.report.add(key, value, "noted", "distributed.timeout_minutes", "seconds → minutes, rounded up")


def _resume(draft: Draft, key: str, value: Any) -> None:
    if value in (None, False):
        draft.report.add(key, value, "noted", "train.resume", "not resuming, as tuneforge's default")
        return
    draft.set("train.resume", "auto" if value is True else str(value))
    draft.report.add(key, value, "mapped", "train.resume")


def _report_to(draft: Draft, key: str, value: Any) -> None:
    names = as_list(value)
    if len(names) == 1 and names[0] in REPORT_TO:
        draft.set("train.report_to", names[0])
        draft.report.add(key, value, "mapped", "train.report_to")
    else:
        draft.report.add(key, value, "dropped", "train.report_to", f"one of {', '.join(REPORT_TO)} is supported")


def _max_steps(draft: Draft, key: str, value: Any) -> None:
    if int(value) > 0:
        to("train.max_steps", int)(draft, key, value)
    else:
        draft.report.add(key, value, "noted", "train.epochs", "-1: train for num_train_epochs, as tuneforge does")


def _datasets(draft: Draft, key: str, value: Any) -> None:
    """Handled with dataset_info.json by import_llamafactory; reported there."""


def _seed(draft: Draft, key: str, value: Any) -> None:
    draft.set("train.seed", int(value))
    draft.set("data.seed", int(value))
    draft.report.add(key, value, "mapped", "train.seed, data.seed")


NOT_SAVED = "tuneforge saves adapter, checkpoints and metrics in output.dir and plots the loss itself"
RULES: dict[str, Rule] = {
    # model
    "model_name_or_path": to("model.name_or_path", str),
    "adapter_name_or_path": to("method.adapter", str, "continues training this adapter (its rank and targets apply)"),
    "trust_remote_code": to("model.trust_remote_code", as_bool),
    "cache_dir": to("model.cache_dir", str),
    "model_revision": to("model.revision", str),
    "flash_attn": lambda d, k, v: to("model.attn", ATTENTION.__getitem__)(d, k, v),
    "enable_liger_kernel": lambda d, k, v: to("model.kernels", lambda x: "liger" if as_bool(x) else "none")(d, k, v),
    "use_unsloth": off_only("unsloth's patched kernels", "model.kernels: liger, train.loss: chunked"),
    "use_unsloth_gc": off_only("unsloth's offloaded gradient checkpointing", "train.gradient_checkpointing"),
    "use_fast_tokenizer": noted("tuneforge always uses the fast tokenizer"),
    "quantization_bit": _quantization_bit,
    "quantization_method": lambda d, k, v: (
        noted("bitsandbytes, as tuneforge's qlora", "method.type: qlora")
        if v == "bnb"
        else off_only("hqq / eetq quantization")
    )(d, k, v),
    "double_quantization": to("method.double_quant", as_bool),
    "quantization_type": to("method.quant_type", str),
    "rope_scaling": off_only("rope_scaling (context extension)"),
    "resize_vocab": off_only("resizing the vocabulary"),
    "new_special_tokens": off_only("new special tokens"),
    "image_max_pixels": drop(TEXT_ONLY),
    "image_min_pixels": drop(TEXT_ONLY),
    "video_max_pixels": drop(TEXT_ONLY),
    "video_min_pixels": drop(TEXT_ONLY),
    "video_fps": drop(TEXT_ONLY),
    "video_maxlen": drop(TEXT_ONLY),
    "freeze_vision_tower": drop(TEXT_ONLY),
    "freeze_multi_modal_projector": drop(TEXT_ONLY),
    "freeze_language_model": off_only("freezing the language model"),
    "media_dir": drop(TEXT_ONLY),
    # method
    "stage": _stage,
    "do_train": noted("`tuneforge train` trains", "tuneforge train"),
    "do_eval": drop("no evaluation-only pass in train", "tuneforge eval"),
    "do_predict": drop("no prediction pass in train", "tuneforge eval"),
    "finetuning_type": method_type("quantization_bit"),
    "lora_rank": to("method.rank", int),
    "lora_alpha": to("method.alpha", int),
    "lora_dropout": to("method.dropout", float),
    "lora_target": _lora_target,
    "additional_target": to("method.modules_to_save", as_list),
    "use_rslora": to("method.use_rslora", as_bool),
    "use_dora": to("method.use_dora", as_bool),
    "loraplus_lr_ratio": off_only("LoRA+ learning rates", "train.learning_rate"),
    "pissa_init": off_only("PiSSA initialisation"),
    "create_new_adapter": off_only("a new adapter on top of adapter_name_or_path", "method.adapter"),
    "pref_beta": to("method.beta", float),
    "pref_loss": _pref_loss,
    "pref_ftx": off_only("an SFT loss term mixed into the preference loss"),
    "dpo_label_smoothing": off_only("DPO label smoothing", "method.dpo_loss: robust"),
    "simpo_gamma": to("method.simpo_gamma", float),
    "kto_chosen_weight": to("method.desirable_weight", float),
    "kto_rejected_weight": to("method.undesirable_weight", float),
    "ref_model": off_only("a separate reference model", "method.reference"),
    "deepspeed": _deepspeed,
    "fsdp": lambda d, k, v: (to("distributed.strategy", lambda _: "fsdp") if v else noted("off"))(d, k, v),
    "ray_num_workers": to("distributed.nproc", int, "tuneforge launches its processes with torchrun, not Ray"),
    # dataset
    "dataset": _datasets,
    "dataset_dir": noted("where dataset_info.json's file names are read from", "data.datasets[].path"),
    "eval_dataset": drop("a separate evaluation dataset", "data.val_size"),
    "template": _template,
    "enable_thinking": noted("read with template", "data.thinking"),
    "cutoff_len": _cutoff_len,
    "max_samples": noted(
        "applied to every dataset; LLaMA-Factory keeps the first N, tuneforge N after shuffling",
        "data.datasets[].max_samples",
    ),
    "val_size": to("data.val_size", float),
    "train_on_prompt": off_only("loss on the prompt tokens"),
    "mask_history": to("data.train_on", lambda v: "last_turn" if as_bool(v) else "all_turns"),
    "packing": to(
        "data.packing",
        as_bool,
        "tuneforge packs each batch without cross-sample attention (LLaMA-Factory's "
        "neat_packing); the samples and the loss are those of the unpacked batch",
    ),
    "neat_packing": to("data.packing", as_bool, "tuneforge's packing never attends across samples"),
    "default_system": noted("set on every dataset", "data.datasets[].system"),
    "tool_format": drop("the model's own chat template renders tools", "data.datasets[].format"),
    "preprocessing_num_workers": to("data.num_proc", int),
    "preprocessing_batch_size": drop("tuneforge chooses its batches for tokenizing"),
    "dataloader_num_workers": drop("tuneforge chooses the data loader workers"),
    "overwrite_cache": drop(
        "tuneforge's data cache is keyed by the data and config, so it is never stale", "data.cache_dir"
    ),
    "tokenized_path": drop("tuneforge caches tokenized data by content", "data.cache_dir"),
    "streaming": off_only("streaming datasets"),
    "mix_strategy": off_only("interleaved mixing", "data.datasets[].weight", off=(None, "concat")),
    # output
    "output_dir": to("output.dir", str),
    "overwrite_output_dir": to("output.overwrite", as_bool),
    "logging_steps": to("train.logging_steps", int),
    "save_steps": to("train.save_steps", int),
    "save_total_limit": to("train.save_total_limit", int),
    "plot_loss": noted(NOT_SAVED),
    "save_only_model": drop("tuneforge checkpoints keep the optimizer state so that resume is exact", "train.resume"),
    "report_to": _report_to,
    "run_name": drop("the run is named by its folder", "output.dir"),
    "logging_dir": drop(NOT_SAVED, "output.dir"),
    # train
    "per_device_train_batch_size": to("train.per_device_batch_size", int),
    "per_device_eval_batch_size": drop("evaluation uses the training batch size", "train.per_device_batch_size"),
    "gradient_accumulation_steps": to("train.gradient_accumulation", int),
    "gradient_checkpointing": to("train.gradient_checkpointing", as_bool),
    "disable_gradient_checkpointing": to("train.gradient_checkpointing", lambda v: not as_bool(v)),
    "gradient_checkpointing_kwargs": drop(
        "tuneforge picks non-reentrant checkpointing", "train.gradient_checkpointing"
    ),
    "use_reentrant_gc": drop("tuneforge picks non-reentrant checkpointing", "train.gradient_checkpointing"),
    "learning_rate": to("train.learning_rate", float),
    "num_train_epochs": to("train.epochs", float),
    "max_steps": _max_steps,
    "lr_scheduler_type": to("train.lr_scheduler", str),
    "warmup_ratio": to("train.warmup_ratio", float),
    "warmup_steps": to("train.warmup_steps", int),
    "weight_decay": to("train.weight_decay", float),
    "max_grad_norm": to("train.max_grad_norm", float),
    "optim": to("train.optim", str),
    "seed": _seed,
    "group_by_length": to("data.group_by_length", as_bool),
    "torch_compile": to("train.compile", as_bool),
    "bf16": _dtype,
    "fp16": _dtype,
    "pure_bf16": _dtype,
    "ddp_timeout": _timeout,
    "resume_from_checkpoint": _resume,
    "eval_strategy": noted(
        "with data.val_size, tuneforge evaluates every train.eval_steps (default: each save)", "train.eval_steps"
    ),
    "eval_steps": eval_steps("val_size"),
}
UNKNOWN = "not known to the importer: no tuneforge equivalent was mapped (see docs/coming-from.md)"


def _apply_datasets(draft: Draft, dataset_info: Path | None) -> None:
    """`dataset:` names → data.datasets, with max_samples and default_system applied to each."""
    names = as_list(draft.args.get("dataset", ""))
    if not names:
        draft.report.refuse("dataset", None, "no dataset named")
        return
    dataset_dir = str(draft.args.get("dataset_dir", "data"))
    if dataset_dir.startswith("REMOTE:") or dataset_dir == "ONLINE":
        draft.report.refuse(
            "dataset_dir", dataset_dir, "dataset_info.json on a hub; download it and pass --dataset-info"
        )
        return
    info_path = dataset_info or _find(str(Path(dataset_dir) / "dataset_info.json"), draft.report.source)
    info_path = info_path or Path(dataset_dir) / "dataset_info.json"
    info = read_dataset_info(info_path)
    draft.report.add("dataset", draft.args["dataset"], "mapped", "data.datasets", f"resolved through {info_path}")
    for name in names:
        ds = resolve_dataset(name, info, info_path.parent, draft.report)
        for lf_key, tf_key in (("max_samples", "max_samples"), ("default_system", "system")):
            if draft.args.get(lf_key) is not None:
                ds.setdefault(tf_key, draft.args[lf_key])
        draft.raw["data"]["datasets"].append(ds)


def _lf_defaults(draft: Draft) -> None:
    """LLaMA-Factory's (and transformers') defaults where tuneforge's differ, so the same model is trained."""
    method = draft.get("method.type", "lora")
    if method in ("lora", "qlora") and draft.get("method.adapter") is None:
        draft.default("method.alpha", 2 * draft.get("method.rank", 8), "LLaMA-Factory's default lora_alpha: 2 × rank")
        draft.default("method.dropout", 0.0, "LLaMA-Factory's default lora_dropout")
        if method == "qlora":
            draft.default("method.double_quant", True, "LLaMA-Factory's default double_quantization")
    draft.default("train.learning_rate", 5e-5, "transformers' default learning_rate")
    draft.default("train.lr_scheduler", "linear", "transformers' default lr_scheduler_type")
    draft.default("train.per_device_batch_size", 8, "transformers' default per_device_train_batch_size")
    draft.default("train.gradient_checkpointing", True, "LLaMA-Factory checkpoints gradients unless told not to")
    draft.default("data.group_by_length", False, "transformers' default group_by_length")
    draft.default("data.truncation", "truncate", "LLaMA-Factory truncates long samples, it never drops them")
    draft.default("train.save_total_limit", None, "transformers keeps every checkpoint by default")
    if draft.get("method.objective") == "kto" and draft.get("train.per_device_batch_size") < 2:
        kto_batch(draft)


def import_llamafactory(draft: Draft, dataset_info: Path | None) -> None:
    """Fill `draft` from LLaMA-Factory arguments (its args come from a YAML or a llamafactory-cli line)."""
    draft.apply(RULES, UNKNOWN)
    _apply_datasets(draft, dataset_info)
    if draft.args.get("stage", "sft") == "sft" and "stage" not in draft.args:
        draft.set("method.objective", "sft")
    _lf_defaults(draft)
