"""The training stage, top to bottom: run folder → data → model → Trainer → adapter or model + metrics.

One function, `train`, used by the CLI on one process and by launchers on many (only rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tuneforge.config import Config, save_config
from tuneforge.errors import UserError
from tuneforge.io import atomic_dir, atomic_write_json
from tuneforge.rundir import RunDir
from tuneforge.train.callbacks import MetricsCallback, ProgressBarCallback, plot_loss
from tuneforge.train.distributed import Processes, agree, init_processes, node_first
from tuneforge.train.scratch import own_run_folder
from tuneforge.train.trainer import SFTTrainer


def resolve_resume(cfg: Config, run: RunDir) -> str | None:
    """The checkpoint to resume from: the newest one for `auto`, a given path, or None."""
    resume = cfg.train.resume
    if resume is None:
        return None
    if resume == "auto":
        latest = run.latest_checkpoint()
        return str(latest) if latest else None
    if not Path(resume, "trainer_state.json").is_file():
        raise UserError(f"train.resume: {resume} is not a checkpoint folder (no trainer_state.json)")
    return resume


def check_run_dir(cfg: Config, run: RunDir, resume: str | None) -> None:
    """Refuse to overwrite a finished run or to silently restart over existing checkpoints."""
    finished = run.adapter.exists() or run.model.exists()
    if resume or cfg.output.overwrite:
        if cfg.output.overwrite and not resume:
            for path in (run.checkpoints, run.adapter, run.model, run.base, run.metrics):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return
    if finished or run.latest_checkpoint():
        raise UserError(
            f"output.dir: {run.root} already holds a {'finished run' if finished else 'partial run'}; "
            "set train.resume=auto to continue it, output.overwrite=true to start over, or another output.dir"
        )


def setup_tracker(cfg: Config, run: RunDir) -> None:
    """Check the chosen tracker is installed; TensorBoard logs go under RUN/logs."""
    import importlib.util
    import os

    name = cfg.train.report_to
    if name == "none":
        return
    if importlib.util.find_spec(name) is None:
        raise UserError(
            f"train.report_to: {name} is not installed; pip install 'tuneforge[{name}]' or set report_to: none"
        )
    if name == "tensorboard":
        # transformers reads this variable only; without it the logs land inside checkpoints/.
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run.root / "logs" / "tensorboard"))


def check_optimizer(name: str) -> None:
    """Fail, with the fix, where train.optim cannot run: bitsandbytes missing, or paging without a CUDA GPU."""
    import torch

    from tuneforge.model.quant import require_bitsandbytes

    if name.endswith("_8bit") or name.startswith("paged_"):
        require_bitsandbytes(f"train.optim: {name}")
    if name.startswith("paged_") and not torch.cuda.is_available():
        raise UserError(
            f"train.optim: {name} pages optimizer state between GPU and CPU memory, which needs a CUDA GPU; "
            "here set train.optim: adamw_torch or adamw_8bit"
        )


def check_hardware(cfg: Config) -> None:
    """Fail before any work where dtype, attention, optimizer or quantization cannot run here (all problems at once)."""
    from tuneforge.model.load import pick_attn, pick_dtype
    from tuneforge.model.quant import require_bitsandbytes

    checks = [
        lambda: pick_dtype(cfg.model.dtype),
        lambda: pick_attn(cfg.model.attn),
        lambda: check_optimizer(cfg.train.optim),
    ]
    if cfg.method.type == "qlora":
        checks.append(lambda: require_bitsandbytes("method.type: qlora"))
    problems = []
    for check in checks:
        try:
            check()
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("\n".join(problems))


def training_arguments(cfg: Config, run: RunDir, has_eval: bool):
    """transformers TrainingArguments from the config (the only place they are built)."""
    import torch
    from transformers import TrainingArguments

    from tuneforge.model.load import pick_dtype
    from tuneforge.train.strategy import strategy_arguments

    t = cfg.train
    dtype = pick_dtype(cfg.model.dtype)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and dtype == torch.bfloat16
    fp16 = on_gpu and dtype == torch.float16  # with loss scaling; LoRA weights stay fp32 (model/adapters.py)
    cpu_processes = Processes.from_env().launched and not on_gpu
    # transformers 5.24 renamed gradient_checkpointing* to activation_checkpointing* (the old names warn); older
    # releases in pyproject's range know only the old names. Drop the fallback once the floor is 5.24.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps or t.warmup_ratio,  # transformers reads a value < 1 as a ratio
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        # Under FSDP, FSDP itself checkpoints activations (see strategy_arguments).
        **{
            checkpointing: t.gradient_checkpointing and cfg.distributed.strategy != "fsdp",
            f"{checkpointing}_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        },
        optim=t.optim,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps or t.save_steps,
        seed=t.seed,
        data_seed=cfg.data.seed,
        bf16=bf16,
        fp16=fp16,
        report_to=[] if t.report_to == "none" else [t.report_to],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if cfg.data.group_by_length else "random",
        dataloader_pin_memory=on_gpu,
        disable_tqdm=True,  # our own bar shows loss, tokens/s and ETA
        **strategy_arguments(cfg.distributed, t.gradient_checkpointing, cpu_processes=cpu_processes),
    )


def _save_final(trainer, cfg: Config, run: RunDir, tokenizer) -> Path:
    target = run.adapter if cfg.method.type != "full" else run.model
    if not trainer.is_world_process_zero():
        trainer.save_model(str(target))  # joins the ZeRO-3 / FSDP weight gathering; writes nothing here
        return target
    with atomic_dir(target) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return target


def _start(cfg: Config, run: RunDir, procs: Processes) -> str | None:
    """Checks before any work; all processes agree on config and resume point, or all stop. Returns the resume point."""
    resume, problem = None, None
    try:
        resume = resolve_resume(cfg, run)
        if procs.is_main:
            check_run_dir(cfg, run, resume)
        setup_tracker(cfg, run)
        check_hardware(cfg)
    except UserError as exc:
        problem = str(exc)
    agree(cfg, procs, resume, problem)
    if procs.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    return resume


def train(cfg: Config, callbacks: list[Any] | None = None, log=print) -> RunDir:
    """Run one training job from a validated config; returns the run folder."""
    from transformers import PrinterCallback, set_seed

    from tuneforge.data.collate import PackCollator, make_collator
    from tuneforge.data.prepare import prepare
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.kernels import apply_kernels, compile_layers
    from tuneforge.model.load import load_model, load_tokenizer, save_random_base

    procs = Processes.from_env()
    init_processes(cfg.distributed, procs)
    run = RunDir(Path(cfg.output.dir))
    resume = _start(cfg, run, procs)
    set_seed(cfg.train.seed)

    tokenizer = load_tokenizer(cfg.model)
    with node_first(procs):  # tokenized once per node; the other processes read the cache
        data = prepare(cfg.data, tokenizer, log)
    # Past node_first's barrier rank 0 has written config.yaml: a process that cannot see it is on another node
    # without shared storage, and keeps what it must write itself (random base, checkpoint shares) in scratch.
    with own_run_folder(run) as (mine, own_callbacks):
        model_cfg = cfg.model
        if model_cfg.init == "random":
            # Random weights exist nowhere else: written once per node as the run's base (identical: seeded), which
            # merge, chat and serve load too; every process then loads them like any checkpoint (quantized for qlora).
            with node_first(procs):
                model_cfg = save_random_base(model_cfg, mine.base, tokenizer, seed=cfg.train.seed)
        model = load_model(model_cfg, cfg.method, log=log)
        model = apply_method(model, cfg.method, log)
        kernels = apply_kernels(model, cfg.model.kernels, log)
        if cfg.train.compile:
            log(f"train.compile: {compile_layers(model)} decoder layers compile on first use")
        collator = make_collator(cfg.data, tokenizer.pad_token_id, model, log)
        trainer = SFTTrainer(
            model=model,
            args=training_arguments(cfg, mine, data.validation is not None),
            train_dataset=data.train,
            eval_dataset=data.validation,
            data_collator=collator,
            processing_class=tokenizer,
            loss=cfg.train.loss,
            callbacks=[MetricsCallback(run, resume), ProgressBarCallback(), *own_callbacks, *(callbacks or [])],
        )
        trainer.remove_callback(PrinterCallback)  # our bar and metrics.jsonl show the logs
        log(f"training → {run.root}" + (f" (resuming from {resume})" if resume else ""))
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - start
    if trainer.state.global_step < trainer.state.max_steps:
        log(f"stopped early at step {trainer.state.global_step}; resume with train.resume=auto")
        return run
    tokens = trainer.token_summary(wall)  # every process: it sums their counts
    target = _save_final(trainer, cfg, run, tokenizer)
    if trainer.is_world_process_zero():
        summary = tokens | {
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "resumed_from": resume,
            "output": str(target),
            "packing": ("varlen" if collator.varlen else "rows") if isinstance(collator, PackCollator) else "off",
            "loss": "liger_fused" if trainer.lean_loss and trainer.lean_loss.liger_used else cfg.train.loss,
            "kernels": kernels,
            "compile": cfg.train.compile,
        }
        atomic_write_json(run.summary, summary)
        plot_loss(run)
        log(f"done: {target} ({summary['steps']} steps, {wall:.0f} s, {summary['tokens_per_s']:.0f} tokens/s)")
        log(json.dumps({k: summary[k] for k in ("train_loss", "tokens_seen", "loss_tokens")}))
    return run
