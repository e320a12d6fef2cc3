"""`tuneforge config export --to llamafactory`: a tuneforge config as a LLaMA-Factory training YAML and the
dataset_info.json it reads, with a report of every tuneforge key (the reverse of llamafactory.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import Config, DatasetConfig, looks_like_path
from tuneforge.importers.report import ImportReport

ATTENTION = {"auto": "auto", "sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}
PREF_LOSS = {"orpo": "orpo", "simpo": "simpo"}
DPO_LOSSES = ("sigmoid", "ipo", "hinge")
# tuneforge format → (LLaMA-Factory formatting, ranking, tuneforge column → LLaMA-Factory column name)
FORMATS: dict[str, tuple[str, bool, dict[str, str]]] = {
    "alpaca": (
        "alpaca",
        False,
        {"instruction": "prompt", "input": "query", "output": "response", "system": "system", "history": "history"},
    ),
    "query_response": ("alpaca", False, {"query": "prompt", "response": "response", "system": "system"}),
    "sharegpt": ("sharegpt", False, {"conversations": "messages", "system": "system", "tools": "tools"}),
    "messages": ("openai", False, {"messages": "messages", "tools": "tools"}),
    "ranking": (
        "sharegpt",
        True,
        {"conversations": "messages", "chosen": "chosen", "rejected": "rejected", "system": "system", "tools": "tools"},
    ),
    "preference": (
        "alpaca",
        True,
        {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    ),
    "kto": ("alpaca", False, {"prompt": "prompt", "completion": "response", "label": "kto_tag", "system": "system"}),
}


def _format(ds: DatasetConfig) -> str | None:
    """The dataset's format, detected from its first record where the config says auto (local files only)."""
    if ds.format != "auto":
        return ds.format
    if not looks_like_path(ds.path) and not Path(ds.path).exists():
        return None
    from tuneforge.data.formats import detect_format
    from tuneforge.data.sources import raw_records

    first = next(iter(raw_records(ds)), None)
    return detect_format(first.record, ds.columns) if first is not None else None


def _dataset_entry(ds: DatasetConfig, key: str, report: ImportReport) -> dict[str, Any]:
    """One dataset_info.json entry for a tuneforge dataset."""
    from tuneforge.data.formats import DEFAULT_COLUMNS

    entry: dict[str, Any] = {}
    local = ds.source == "local" or (ds.source == "auto" and (looks_like_path(ds.path) or Path(ds.path).exists()))
    if local:
        entry["file_name"] = str(Path(ds.path).expanduser().resolve())
    else:
        entry["ms_hub_url" if ds.source == "modelscope" else "hf_hub_url"] = ds.path
    report.add(f"{key}.path", ds.path, "mapped", "file_name" if local else "hf_hub_url / ms_hub_url")
    fmt = _format(ds)
    if fmt not in FORMATS:
        report.refuse(
            f"{key}.format",
            fmt or ds.format,
            "no LLaMA-Factory formatting reads it (or it could not be detected: set format:)",
        )
        return entry
    formatting, ranking, names = FORMATS[fmt]
    entry["formatting"] = formatting
    if ranking:
        entry["ranking"] = True
    columns = {**DEFAULT_COLUMNS[fmt], **ds.columns}
    entry["columns"] = {names[role]: columns[role] for role in names if role in columns}
    if fmt in ("sharegpt", "ranking"):
        entry["tags"] = {"role_tag": columns["role"], "content_tag": columns["content"]}
    report.add(
        f"{key}.format",
        ds.format,
        "mapped" if ds.format == fmt else "noted",
        "formatting, columns",
        "" if ds.format == fmt else f"detected as {fmt}",
    )
    for name, lf in (("subset", "subset"), ("split", "split"), ("max_samples", "num_samples")):
        value = getattr(ds, name)
        if value is not None and (name != "split" or value != "train"):
            entry[lf] = value
            report.add(
                f"{key}.{name}",
                value,
                "noted" if name == "max_samples" else "mapped",
                lf,
                "LLaMA-Factory samples this many records (repeating a smaller set)" if name == "max_samples" else "",
            )
    for name, why in (
        ("placeholders", "LLaMA-Factory does not fill {{name}} placeholders: edit the data"),
        ("weight", "LLaMA-Factory mixes by interleave_probs with mix_strategy interleave_*"),
    ):
        if getattr(ds, name):
            report.add(f"{key}.{name}", getattr(ds, name), "dropped", "", why)
    return entry


def _method(cfg: Config, out: dict[str, Any], report: ImportReport) -> None:
    m = cfg.method
    stage = "kto" if m.objective == "kto" else ("sft" if m.objective == "sft" else "dpo")
    out["stage"], out["do_train"] = stage, True
    report.add("method.objective", m.objective, "mapped", "stage" + (", pref_loss" if stage == "dpo" else ""))
    if stage == "dpo":
        if m.objective == "dpo" and m.dpo_loss not in DPO_LOSSES:
            report.refuse("method.dpo_loss", m.dpo_loss, f"LLaMA-Factory's pref_loss has {', '.join(DPO_LOSSES)}")
        out["pref_loss"] = PREF_LOSS.get(m.objective, m.dpo_loss)
    if stage != "sft":
        out["pref_beta"] = m.beta
        report.add("method.beta", m.beta, "mapped", "pref_beta")
    if m.objective == "simpo":
        out["simpo_gamma"] = m.simpo_gamma
    if m.objective == "kto":
        out["kto_chosen_weight"], out["kto_rejected_weight"] = m.desirable_weight, m.undesirable_weight
    if m.objective in ("dpo", "kto") and m.reference == "precomputed":
        report.add(
            "method.reference", m.reference, "dropped", "", "LLaMA-Factory computes reference log-probs each step"
        )
    out["finetuning_type"] = "full" if m.type == "full" else "lora"
    report.add("method.type", m.type, "mapped", "finetuning_type" + (", quantization_bit" if m.type == "qlora" else ""))
    if m.type == "qlora":
        out |= {
            "quantization_bit": m.bits,
            "quantization_method": "bnb",
            "quantization_type": m.quant_type,
            "double_quantization": m.double_quant,
        }
    if m.type == "full":
        return
    if m.adapter:
        out["adapter_name_or_path"] = m.adapter
        return
    target = "all" if m.target_modules == "all-linear" else ",".join(m.target_modules)
    out |= {"lora_rank": m.rank, "lora_alpha": m.alpha, "lora_dropout": m.dropout, "lora_target": target}
    out |= {k: v for k, v in (("use_rslora", m.use_rslora), ("use_dora", m.use_dora)) if v}
    if m.modules_to_save:
        out["additional_target"] = ",".join(m.modules_to_save)
    report.add(
        "method.rank, alpha, dropout, target_modules",
        m.rank,
        "mapped",
        "lora_rank, lora_alpha, lora_dropout, lora_target",
    )


def _data(cfg: Config, out: dict[str, Any], report: ImportReport) -> dict[str, Any]:
    d = cfg.data
    info, names = {}, []
    for i, ds in enumerate(d.datasets):
        name = f"{Path(ds.path).stem or 'dataset'}_{i}".replace(".", "_")
        info[name] = _dataset_entry(ds, f"data.datasets.{i}", report)
        names.append(name)
    out["dataset"] = ",".join(names)
    systems = {ds.system for ds in d.datasets}
    if len(systems) == 1 and None not in systems:
        out["default_system"] = systems.pop()
    elif systems != {None}:
        report.add(
            "data.datasets[].system",
            sorted(s or "" for s in systems),
            "dropped",
            "default_system",
            "LLaMA-Factory has one default_system for all datasets",
        )
    out["template"] = "qwen3"
    if d.thinking != "keep_empty":
        out["enable_thinking"] = False
    report.add(
        "data.thinking",
        d.thinking,
        "noted",
        "template: qwen3" + (", enable_thinking: false" if d.thinking != "keep_empty" else ""),
        {
            "keep_empty": "LLaMA-Factory's qwen3 trains the empty think block, as keep_empty does",
            "off": "enable_thinking: false removes reasoning, as off does",
            "auto": "LLaMA-Factory has no per-sample choice: enable_thinking false puts the empty think block on the "
            "prompt side as auto does, but also removes the reasoning of samples that have it",
        }[d.thinking],
    )
    out["cutoff_len"] = d.max_length
    report.add(
        "data.max_length",
        d.max_length,
        "noted",
        "cutoff_len",
        "LLaMA-Factory truncates; it never drops"
        if d.truncation == "drop"
        else "LLaMA-Factory truncates prompt and answer in proportion",
    )
    if d.train_on == "last_turn":
        out["mask_history"] = True
    if d.packing:
        out["packing"], out["neat_packing"] = True, True
        report.add(
            "data.packing",
            True,
            "noted",
            "packing, neat_packing",
            "LLaMA-Factory packs to cutoff_len (fewer, longer rows) where tuneforge packs each batch",
        )
    out |= {"val_size": d.val_size} if d.val_size else {}
    out |= {"preprocessing_num_workers": d.num_proc} if d.num_proc else {}
    return info


def _train(cfg: Config, out: dict[str, Any], report: ImportReport) -> None:
    t = cfg.train
    out |= {
        "num_train_epochs": t.epochs,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "per_device_train_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "logging_steps": t.logging_steps,
        "save_steps": t.save_steps,
        "seed": t.seed,
        "optim": t.optim,
        "report_to": t.report_to,
        "plot_loss": True,
        "group_by_length": cfg.data.group_by_length,
    }
    out |= {"warmup_steps": t.warmup_steps} if t.warmup_steps else {"warmup_ratio": t.warmup_ratio}
    out |= {
        k: v
        for k, v in (
            ("max_steps", t.max_steps),
            ("save_total_limit", t.save_total_limit),
            ("resume_from_checkpoint", t.resume),
        )
        if v is not None
    }
    if t.eval_steps:
        out |= {
            "eval_strategy": "steps",
            "eval_steps": t.eval_steps,
            "per_device_eval_batch_size": t.per_device_batch_size,
        }
    if not t.gradient_checkpointing:
        out["disable_gradient_checkpointing"] = True
    if t.compile:
        out["torch_compile"] = True
    report.add("train", "(every key)", "mapped", "transformers TrainingArguments of the same meaning")
    if t.loss == "chunked":
        report.add(
            "train.loss",
            t.loss,
            "noted",
            "enable_liger_kernel",
            "LLaMA-Factory fuses the loss only with "
            "enable_liger_kernel (which also swaps kernels); without it the full logits are computed",
        )


def _model_and_output(cfg: Config, out: dict[str, Any], report: ImportReport) -> None:
    mc = cfg.model
    out["model_name_or_path"] = mc.name_or_path
    out |= {k: v for k, v in (("model_revision", mc.revision), ("cache_dir", mc.cache_dir)) if v}
    out |= {"trust_remote_code": mc.trust_remote_code, "flash_attn": ATTENTION[mc.attn]}
    if mc.kernels == "liger":
        out["enable_liger_kernel"] = True
    dtype = {"auto": "bf16", "bf16": "bf16", "fp16": "fp16"}.get(mc.dtype)
    if dtype:
        out[dtype] = True
    report.add(
        "model.dtype",
        mc.dtype,
        "noted" if mc.dtype == "auto" else "mapped",
        dtype or "(fp32)",
        "auto is bf16 on GPUs that support it" if mc.dtype == "auto" else "",
    )
    if mc.hub == "modelscope":
        report.add("model.hub", mc.hub, "noted", "USE_MODELSCOPE_HUB=1", "set it in the environment of the run")
    out["output_dir"], out["overwrite_output_dir"] = cfg.output.dir, cfg.output.overwrite
    dist = cfg.distributed
    if dist.strategy == "deepspeed":
        from tuneforge.strategy import deepspeed_config

        out["deepspeed"] = deepspeed_config(dist.deepspeed)
        report.add("distributed.deepspeed", dist.deepspeed, "mapped", "deepspeed", "tuneforge's JSON for it")
    elif dist.strategy == "fsdp":
        out["fsdp"] = "full_shard auto_wrap" + (" offload" if dist.fsdp_offload else "")
        report.add("distributed.strategy", "fsdp", "mapped", "fsdp")
    out["ddp_timeout"] = dist.timeout_minutes * 60
    if dist.nproc > 1 or dist.nnodes > 1:
        report.add(
            "distributed.nproc, nnodes",
            [dist.nproc, dist.nnodes],
            "noted",
            "",
            "llamafactory-cli runs torchrun on all visible GPUs; set NNODES / NODE_RANK / MASTER_ADDR for nodes",
        )


def export_llamafactory(cfg: Config, source: str) -> tuple[dict[str, Any], dict[str, Any], ImportReport]:
    """(LLaMA-Factory YAML mapping, its dataset_info.json, the report) for a tuneforge config."""
    report = ImportReport(source, "tuneforge → LLaMA-Factory")
    out: dict[str, Any] = {}
    _model_and_output(cfg, out, report)
    _method(cfg, out, report)
    info = _data(cfg, out, report)
    _train(cfg, out, report)
    report.raise_refusals()
    return out, info, report
