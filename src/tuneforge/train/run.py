"""The training stage, top to bottom: run folder → data → model → Trainer → adapter or model + metrics.

One function, `train`, used by the CLI on one process and by launchers on many (only rank 0 writes).
"""

from __future__ import annotations

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
        raise UserError(f"train.report_to: {name} is not installed; pip install 'tuneforge[{name}]' or set report_to: none")
    if name == "tensorboard":
        # transformers reads this variable only; without it the logs land inside checkpoints/.
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run.root / "logs" / "tensorboard"))


def training_arguments(cfg: Config, run: RunDir, has_eval: bool):
    """transformers TrainingArguments from the config (the only place they are built)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    dtype = cfg.model.dtype
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and (dtype == "bf16" or (dtype == "auto" and torch.cuda.is_bf16_supported()))
    fp16 = on_gpu and not bf16 and dtype in ("auto", "fp16")
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
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
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
        dataloader_pin_memory=on_gpu,
        disable_tqdm=True,  # our own bar shows loss, tokens/s and ETA
    )


def _save_final(trainer, cfg: Config, run: RunDir, tokenizer) -> Path:
    target = run.adapter if cfg.method.type != "full" else run.model
    with atomic_dir(target) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return target


def train(cfg: Config, callbacks: list[Any] | None = None, log=print) -> RunDir:
    """Run one training job from a validated config; returns the run folder."""
    from transformers import PrinterCallback, set_seed

    from tuneforge.data.collate import PadCollator
    from tuneforge.data.prepare import prepare
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model, load_tokenizer

    run = RunDir(Path(cfg.output.dir))
    resume = resolve_resume(cfg, run)
    check_run_dir(cfg, run, resume)
    setup_tracker(cfg, run)
    set_seed(cfg.train.seed)

    tokenizer = load_tokenizer(cfg.model)
    data = prepare(cfg.data, tokenizer, log)
    model = load_model(cfg.model, seed=cfg.train.seed)
    if cfg.model.init == "random" and not run.base.exists():
        # Random weights exist nowhere else: keep them so merge, chat and serve find the same base.
        with atomic_dir(run.base) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    model = apply_method(model, cfg.method, log)

    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(cfg, run, data.validation is not None),
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsCallback(run, resume), ProgressBarCallback(), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # our bar and metrics.jsonl show the logs
    log(f"training → {run.root}" + (f" (resuming from {resume})" if resume else ""))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - start
    if trainer.state.global_step < trainer.state.max_steps:
        log(f"stopped early at step {trainer.state.global_step}; resume with train.resume=auto")
        return run
    if trainer.is_world_process_zero():
        target = _save_final(trainer, cfg, run, tokenizer)
        summary = trainer.token_summary(wall) | {
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "resumed_from": resume,
            "output": str(target),
        }
        atomic_write_json(run.summary, summary)
        plot_loss(run)
        log(f"done: {target} ({summary['steps']} steps, {wall:.0f} s, {summary['tokens_per_s']:.0f} tokens/s)")
        log(json.dumps({k: summary[k] for k in ("train_loss", "tokens_seen", "loss_tokens")}))
    return run
