"""ms-swift command lines (`swift sft ...`, `swift rlhf --rlhf_type dpo ...`) → a tuneforge config mapping.

Argument names and defaults are ms-swift's (swift/arguments/*.py and swift/trainers/arguments.py at the commit
named in tests/data/swift/NOTICE); every argument is reported as mapped, noted or dropped.
"""

from __future__ import annotations

import re
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

RLHF_TYPES = {"dpo": "dpo", "orpo": "orpo", "simpo": "simpo", "kto": "kto"}
DTYPES = {"bfloat16": "auto", "float16": "fp16", "float32": "fp32"}
ATTENTION = {
    "flash_attn": "flash_attention_2",
    "flash_attention_2": "flash_attention_2",
    "sdpa": "sdpa",
    "eager": "eager",
}
DEEPSPEED = ("zero2", "zero3", "zero2_offload", "zero3_offload")
TRUNCATION = {"delete": "drop", "right": "truncate"}
# `swift/self-cognition` fills {{NAME}} / {{AUTHOR}} from --model_name / --model_author.
SELF_COGNITION = "swift/self-cognition"


def _quant(draft: Draft, key: str, value: Any) -> None:
    if key == "quant_method":
        if value != "bnb":
            draft.report.refuse(key, value, "quantization other than bitsandbytes")
        else:
            draft.report.add(key, value, "noted", "method.type: qlora", "bitsandbytes, as tuneforge's qlora")
    elif int(value) in (4, 8):
        draft.set("method.bits", int(value))
        draft.report.add(key, value, "mapped", "method.bits")
    else:
        draft.report.refuse(key, value, "quantization other than 4 or 8 bits")


def _rlhf_type(draft: Draft, key: str, value: Any) -> None:
    if value in RLHF_TYPES:
        draft.set("method.objective", RLHF_TYPES[value])
        draft.report.add(key, value, "mapped", "method.objective")
    else:
        draft.report.refuse(key, value, f"rlhf_type {value} (tuneforge has {', '.join(RLHF_TYPES)})")


def _datasets(draft: Draft, key: str, value: Any) -> None:
    """Each `id#N` (hub id or local file, N samples) → one data.datasets entry."""
    hub = "huggingface" if _use_hf(draft) else "modelscope"
    for spec in as_list(value):
        spec, _, count = spec.partition("#")
        local = re.match(r"^[./~]", spec) or spec.endswith((".json", ".jsonl", ".csv", ".parquet"))
        path, _, subset = (spec, "", "") if local else spec.partition(":")
        ds: dict[str, Any] = {"path": path}
        if subset:
            ds["subset"] = subset
        if count:
            ds["max_samples"] = int(count)
        if not local:
            ds["source"] = hub
        if path == SELF_COGNITION:
            ds["placeholders"] = _placeholders(draft)
        draft.raw["data"]["datasets"].append(ds)
    draft.report.add(
        key,
        value,
        "noted",
        "data.datasets",
        f"hub ids are read from {hub} (as swift does"
        f"{' with USE_HF' if hub == 'huggingface' else ''}); `#N` keeps N records (swift samples N); "
        "swift's registered per-dataset preprocessing is not applied: tuneforge detects the format",
    )


def _placeholders(draft: Draft) -> dict[str, str]:
    out = {}
    for name in ("model_name", "model_author"):
        values = as_list(draft.args.get(name, ""))
        if values:
            out[name.removeprefix("model_")] = values[-1]
    return out


def _use_hf(draft: Draft) -> bool:
    return as_bool(draft.args.get("use_hf", draft.args.get("env.USE_HF", False)))


def _model(draft: Draft, key: str, value: Any) -> None:
    draft.set("model.name_or_path", str(value))
    local = str(value).startswith(("/", ".", "~"))
    if not local and not _use_hf(draft):
        draft.set("model.hub", "modelscope")
    draft.report.add(
        key,
        value,
        "mapped" if local or _use_hf(draft) else "noted",
        "model.name_or_path",
        "" if local or _use_hf(draft) else "model.hub: modelscope, swift's default hub",
    )


def _dtype(draft: Draft, key: str, value: Any) -> None:
    draft.set("model.dtype", DTYPES[value])
    draft.report.add(
        key,
        value,
        "noted" if value == "bfloat16" else "mapped",
        "model.dtype",
        "auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU" if value == "bfloat16" else "",
    )


def _deepspeed(draft: Draft, key: str, value: Any) -> None:
    draft.set("distributed.strategy", "deepspeed")
    draft.set("distributed.deepspeed", str(value))
    draft.report.add(
        key,
        value,
        "mapped" if value in DEEPSPEED else "noted",
        "distributed.deepspeed",
        "" if value in DEEPSPEED else "a DeepSpeed JSON file, read when the run starts",
    )


def _truncation(draft: Draft, key: str, value: Any) -> None:
    if value in TRUNCATION:
        to("data.truncation", TRUNCATION.__getitem__)(draft, key, value)
    else:
        draft.report.refuse(key, value, "truncation from the left or splitting (tuneforge drops or cuts the end)")


def _nproc(draft: Draft, key: str, value: Any) -> None:
    draft.set("distributed.nproc", int(value))
    draft.report.add(key, value, "mapped", "distributed.nproc")


def _system(draft: Draft, key: str, value: Any) -> None:
    """Applied to every dataset once they are known (see import_swift)."""
    draft.report.add(key, value, "mapped", "data.datasets[].system")


RULES: dict[str, Rule] = {
    "model": _model,
    "model_type": noted("tuneforge reads the architecture from config.json"),
    "model_revision": to("model.revision", str),
    "use_hf": noted("read with model and dataset", "model.hub"),
    "env.USE_HF": noted("read with model and dataset", "model.hub"),
    "env.CUDA_VISIBLE_DEVICES": noted("kept in the environment: tuneforge honours it the same way"),
    "env.NPROC_PER_NODE": _nproc,
    "env.NNODES": to("distributed.nnodes", int),
    "env.NODE_RANK": to("distributed.node_rank", int),
    "env.MASTER_ADDR": to("distributed.master_addr", str),
    "env.MASTER_PORT": to("distributed.master_port", int),
    "torch_dtype": _dtype,
    "attn_impl": lambda d, k, v: to("model.attn", ATTENTION.__getitem__)(d, k, v),
    "use_liger_kernel": to("model.kernels", lambda v: "liger" if as_bool(v) else "none"),
    "tuner_type": method_type("quant_bits"),
    "train_type": method_type("quant_bits"),
    "quant_method": _quant,
    "quant_bits": _quant,
    "bnb_4bit_quant_type": to("method.quant_type", str),
    "bnb_4bit_use_double_quant": to("method.double_quant", as_bool),
    "rlhf_type": _rlhf_type,
    "beta": to("method.beta", float),
    "cpo_alpha": off_only("CPO's SFT term"),
    "rpo_alpha": off_only("an SFT loss term mixed into the DPO loss (RPO)"),
    "simpo_gamma": to("method.simpo_gamma", float),
    "desirable_weight": to("method.desirable_weight", float),
    "undesirable_weight": to("method.undesirable_weight", float),
    "loss_type": lambda d, k, v: (
        to("method.dpo_loss", str) if d.args.get("rlhf_type", "dpo") == "dpo" else noted("the objective's own loss")
    )(d, k, v),
    "lora_rank": to("method.rank", int),
    "lora_alpha": to("method.alpha", int),
    "lora_dropout": to("method.dropout", float),
    "target_modules": to(
        "method.target_modules", lambda v: "all-linear" if as_list(v) == ["all-linear"] else as_list(v)
    ),
    "modules_to_save": to("method.modules_to_save", as_list),
    "use_rslora": to("method.use_rslora", as_bool),
    "use_dora": to("method.use_dora", as_bool),
    "resume_from_checkpoint": to("train.resume", str),
    "adapters": to("method.adapter", str, "continues training this adapter (its rank and targets apply)"),
    "dataset": _datasets,
    "val_dataset": drop("a separate evaluation dataset", "data.val_size"),
    "split_dataset_ratio": to("data.val_size", float),
    "data_seed": to("data.seed", int),
    "seed": to("train.seed", int),
    "dataset_num_proc": to("data.num_proc", int),
    "load_from_cache_file": noted("tuneforge always caches tokenized data, keyed by its content", "data.cache_dir"),
    "dataloader_num_workers": drop("tuneforge chooses the data loader workers"),
    "streaming": off_only("streaming datasets"),
    "model_name": noted("fills {{NAME}} in swift/self-cognition", "data.datasets[].placeholders.name"),
    "model_author": noted("fills {{AUTHOR}} in swift/self-cognition", "data.datasets[].placeholders.author"),
    "system": _system,
    "max_length": to("data.max_length", int),
    "truncation_strategy": _truncation,
    "packing": to("data.packing", as_bool),
    "padding_free": to("data.packing", as_bool, "tuneforge packs each batch without padding or cross-sample attention"),
    "loss_scale": lambda d, k, v: LOSS_SCALES.get(v, off_only("custom loss scales"))(d, k, v),
    "enable_thinking": noted("the model's own template renders thinking; see data.thinking", "data.thinking"),
    "template": noted("rendered with the model's own chat template (tokenizer_config.json)"),
    "num_train_epochs": to("train.epochs", float),
    "max_steps": to("train.max_steps", int),
    "per_device_train_batch_size": to("train.per_device_batch_size", int),
    "per_device_eval_batch_size": drop("evaluation uses the training batch size", "train.per_device_batch_size"),
    "gradient_accumulation_steps": to("train.gradient_accumulation", int),
    "gradient_checkpointing": to("train.gradient_checkpointing", as_bool),
    "learning_rate": to("train.learning_rate", float),
    "lr_scheduler_type": to("train.lr_scheduler", str),
    "warmup_ratio": to("train.warmup_ratio", float),
    "warmup_steps": to("train.warmup_steps", int),
    "weight_decay": to("train.weight_decay", float),
    "max_grad_norm": to("train.max_grad_norm", float),
    "optim": to("train.optim", str),
    "eval_steps": eval_steps("split_dataset_ratio"),
    "eval_strategy": noted("with data.val_size, tuneforge evaluates every train.eval_steps", "train.eval_steps"),
    "save_steps": to("train.save_steps", int),
    "save_total_limit": to("train.save_total_limit", int),
    "save_only_model": drop("tuneforge checkpoints keep the optimizer state so that resume is exact", "train.resume"),
    "logging_steps": to("train.logging_steps", int),
    "report_to": lambda d, k, v: (
        to("train.report_to", str)
        if v in REPORT_TO
        else drop(f"one of {', '.join(REPORT_TO)} is supported", "train.report_to")
    )(d, k, v),
    "output_dir": to("output.dir", str, "swift adds a versioned sub-folder (v0-...); tuneforge writes into it"),
    "add_version": noted("tuneforge writes into output.dir itself", "output.dir"),
    "deepspeed": _deepspeed,
    "ddp_timeout": lambda d, k, v: to(
        "distributed.timeout_minutes", lambda s: max(1, -(-int(s) // 60)), "seconds → minutes, rounded up"
    )(d, k, v),
}
LOSS_SCALES: dict[str, Rule] = {
    "default": noted("loss on every assistant turn, as tuneforge's data.train_on: all_turns", "data.train_on"),
    "last_round": to("data.train_on", lambda _: "last_turn"),
    "ignore_empty_think": to(
        "data.thinking",
        lambda _: "auto",
        "tuneforge's auto keeps an empty think block on the prompt side, without loss",
    ),
}
UNKNOWN = "not known to the importer: no tuneforge equivalent was mapped (see docs/coming-from.md)"


def _swift_defaults(draft: Draft, kind: str) -> None:
    """ms-swift's defaults where tuneforge's differ, so the same model is trained."""
    method = draft.get("method.type", "lora")
    if kind == "sft":
        draft.set("method.objective", "sft")
    elif draft.get("method.objective") is None:
        draft.set("method.objective", "dpo")
        draft.report.add("(rlhf_type)", "dpo", "noted", "method.objective", "swift rlhf's default rlhf_type")
    if method in ("lora", "qlora") and draft.get("method.adapter") is None:
        draft.default("method.alpha", 32, "ms-swift's default lora_alpha")
    draft.default("train.learning_rate", 1e-5 if method == "full" else 1e-4, "ms-swift's default learning_rate")
    draft.default("train.weight_decay", 0.1, "ms-swift's default weight_decay")
    draft.default("train.logging_steps", 5, "ms-swift's default logging_steps")
    draft.default("train.gradient_checkpointing", True, "ms-swift checkpoints gradients by default")
    batch = draft.get("train.per_device_batch_size", 1)
    world = draft.get("distributed.nproc", 1) * draft.get("distributed.nnodes", 1)
    draft.default(
        "train.gradient_accumulation",
        max(1, -(-16 // (batch * world))),
        "ms-swift's default: 16 samples per step over batch size × processes",
    )
    draft.default("data.group_by_length", False, "transformers' default group_by_length")
    draft.default("train.save_total_limit", None, "transformers keeps every checkpoint by default")
    if draft.get("method.objective") == "kto" and draft.get("train.per_device_batch_size", 1) < 2:
        draft.default("train.per_device_batch_size", 1, "ms-swift's default per_device_train_batch_size")
        kto_batch(draft)


def import_swift(draft: Draft, kind: str) -> None:
    """Fill `draft` from a `swift sft` / `swift rlhf` command line's arguments."""
    draft.apply(RULES, UNKNOWN)
    if not draft.raw["data"]["datasets"]:
        draft.report.refuse("dataset", None, "no dataset named")
    for ds in draft.raw["data"]["datasets"]:
        if draft.args.get("system") is not None:
            ds["system"] = str(draft.args["system"])
    if draft.get("output.dir") is None:
        draft.default("output.dir", "output", "ms-swift's default output_dir")
    _swift_defaults(draft, kind)
