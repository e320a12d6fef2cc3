"""The training stage, top to bottom: run folder → data → model → Trainer → adapter or model + metrics.

One function, `train`, used by the CLI on one process and by launchers on many (only rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import Config, save_config
from tuneforge.data.prepare import check_data_cache
from tuneforge.errors import Interrupted, UserError, problems_of
from tuneforge.io import atomic_dir, atomic_write_json, check_writable
from tuneforge.model.adapters import check_method, continued_adapter
from tuneforge.objective import Objective
from tuneforge.rundir import Run, fingerprint
from tuneforge.strategy import Strategy
from tuneforge.train.callbacks import MetricsCallback, ProgressBarCallback, StopOnSignal, plot_loss, plot_rewards
from tuneforge.train.distributed import Processes, agree, init_processes, node_first
from tuneforge.train.scratch import own_run_folder


def resolve_resume(cfg: Config, run: Run) -> str | None:
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


def check_finished(cfg: Config, run: Run) -> None:
    """Refuse to resume a run that wrote its summary, unless the config asks for more steps or epochs than it ran."""
    if not run.summary.is_file():
        return
    done = json.loads(run.summary.read_text(encoding="utf-8"))
    if cfg.train.max_steps:
        if cfg.train.max_steps > done["steps"]:
            return
        longer = f"train.max_steps above {done['steps']}"
    else:
        if cfg.train.epochs > round(done["epochs"], 4):
            return
        longer = f"train.epochs above {done['epochs']:g}"
    raise UserError(
        f"train.resume: {run.root} is a finished run ({done['steps']} steps; see its summary.json); to train "
        f"longer, raise {longer} and keep train.resume=auto, or start over with output.overwrite=true"
    )


# Keys that may differ between a checkpoint's config and the resuming one: where files live, how fast it runs.
RESUME_FREE_KEYS = {"model.cache_dir", "model.attn", "model.kernels", "data.cache_dir", "data.num_proc"}


def check_resume_config(cfg: Config, resume: str) -> None:
    """A checkpoint continues only the model, data and method it was made with (train.* may change, e.g. epochs)."""
    from tuneforge.config import load_config
    from tuneforge.train.distributed import _flatten

    saved = Path(resume).resolve().parent.parent / "config.yaml"  # RUN/checkpoints/checkpoint-N → RUN/config.yaml
    if not saved.is_file():
        return
    sections = {"model", "data", "method"}
    old, new = (_flatten(c.model_dump(mode="json", include=sections)) for c in (load_config(saved), cfg))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUME_FREE_KEYS)
    if keys:
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        raise UserError(
            f"train.resume: {resume} was made with {keys[0]}={old.get(keys[0])!r:.80} but this config has "
            f"{new.get(keys[0])!r:.80}{more}; resume with the run's own config ({saved}), or start a new run "
            "(another output.dir, or output.overwrite=true)"
        )


def check_continued_adapter(cfg: Config, run: Run) -> None:
    """A resumed run continues the adapter it started from: refuse one that changed since (retrained, replaced)."""
    if cfg.method.adapter is None or not run.manifest_file.is_file():
        return
    recorded = run.manifest()["method"].get("adapter")
    adapter = continued_adapter(cfg.method.adapter)
    if recorded is not None and recorded["fingerprint"] != fingerprint(adapter):
        raise UserError(
            f"method.adapter: {adapter} changed since {run.root} started from it (its run.json records another "
            "fingerprint); the checkpoints continue the old adapter and compare against it, so resuming would mix "
            "the two: put the old adapter back, or start a new run (another output.dir, or output.overwrite=true)"
        )


def check_run_dir(cfg: Config, run: Run, resume: str | None) -> None:
    """Refuse to overwrite a finished run or to silently restart over existing checkpoints."""
    check_writable(run.root, "output.dir", folder=True)
    finished = run.adapter.exists() or run.model.exists()
    if cfg.train.resume and not cfg.output.overwrite:
        check_finished(cfg, run)
    if resume or cfg.output.overwrite:
        return
    if finished or run.latest_checkpoint():
        raise UserError(
            f"output.dir: {run.root} already holds a {'finished run' if finished else 'partial run'}; "
            "set train.resume=auto to continue it, output.overwrite=true to start over, or another output.dir"
        )


# The environment variable each tracker integration of transformers reads its project (MLflow: experiment) from.
TRACKER_PROJECT = {"wandb": "WANDB_PROJECT", "swanlab": "SWANLAB_PROJ_NAME", "mlflow": "MLFLOW_EXPERIMENT_NAME"}


def setup_tracker(cfg: Config, run: Run) -> None:
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
    if cfg.train.project is not None and name in TRACKER_PROJECT:
        # transformers' integrations read the project from the environment only (integrations/integration_utils.py).
        os.environ[TRACKER_PROJECT[name]] = cfg.train.project


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


def require_trl(what: str) -> None:
    """Fail, with the install command, where a preference objective needs TRL and it is missing."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise UserError(f"{what} trains through TRL, which is not installed: pip install 'tuneforge[preference]'")


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
    objective = Objective.of(cfg.method)
    if objective.needs_trl:
        checks.append(lambda: require_trl(f"method.objective: {objective.name}"))
    if objective.sample == "prompt":  # GRPO (issue 27)
        from tuneforge.train.grpo import check_grpo

        checks.append(lambda: check_grpo(cfg, Processes.from_env().world_size))
    if problems := problems_of(checks):
        raise UserError("\n".join(problems))


def training_arguments(cfg: Config, run: Run, has_eval: bool, strategy: Strategy | None = None):
    """transformers TrainingArguments from the config (the only place they are built); `strategy` as in `train`."""
    import torch
    from transformers import TrainingArguments

    from tuneforge.model.load import pick_dtype

    t = cfg.train
    dtype = pick_dtype(cfg.model.dtype)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and dtype == torch.bfloat16
    fp16 = on_gpu and dtype == torch.float16  # with loss scaling; LoRA weights stay fp32 (model/adapters.py)
    procs = Processes.from_env()
    strategy = strategy or Strategy.of(cfg.distributed, procs.world_size)
    cpu_processes = procs.launched and not on_gpu
    # transformers 5.24 renamed gradient_checkpointing* to activation_checkpointing* (the old names warn); older
    # releases in pyproject's range know only the old names. Drop the fallback once the floor is 5.24.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args_class, objective_args = Objective.of(cfg.method).arguments(cfg.method, cfg.data.max_length)
    return args_class(
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
        **{
            checkpointing: strategy.trainer_checkpointing(t.gradient_checkpointing),
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
        run_name=t.run_name or Path(cfg.output.dir).resolve().name,
        remove_unused_columns=False,
        include_num_input_tokens_seen=objective_args.pop("include_num_input_tokens_seen", "non_padding"),
        dataloader_pin_memory=on_gpu,
        disable_tqdm=True,  # our own bar shows loss, tokens/s and ETA
        **strategy.training_arguments(t.gradient_checkpointing, cpu_processes=cpu_processes),
        # An objective may need its own sampling order (kto: sequential).
        **({"train_sampling_strategy": "group_by_length" if cfg.data.group_by_length else "random"} | objective_args),
    )


def trainer_class(objective: Objective) -> type:
    """The Trainer class `objective.trainer` names (objective.py sits below train/, so it names it)."""
    import importlib

    module, _, name = objective.trainer.partition(":")
    return getattr(importlib.import_module(module), name)


def _save_final(trainer, cfg: Config, run: Run, tokenizer) -> Path:
    target = run.adapter if cfg.method.type != "full" else run.model
    if not trainer.is_world_process_zero():
        trainer.save_model(str(target))  # joins the ZeRO-3 / FSDP weight gathering; writes nothing here
        return target
    with atomic_dir(target) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return target


def _start(cfg: Config, run: Run, procs: Processes, log: Callable[..., None]) -> str | None:
    """Checks before any work; all processes agree on config and resume point, or all stop. Returns the resume point."""
    resume, problem = None, None
    if procs.is_main:
        for path in run.clear_interrupted_writes():
            log(f"removed {path} (left by a run that was killed while writing it)")
    try:
        resume = resolve_resume(cfg, run)
        if resume:
            check_resume_config(cfg, resume)
            check_continued_adapter(cfg, run)
        if procs.is_main:
            check_run_dir(cfg, run, resume)
        setup_tracker(cfg, run)
        check_hardware(cfg)
        check_method(cfg.model, cfg.method)
        check_data_cache(cfg.data)
    except UserError as exc:
        problem = str(exc)
    agree(cfg, procs, resume, problem)
    if procs.is_main:
        if cfg.output.overwrite and not resume:
            # Only once every check passed, so a config that cannot run leaves the old run as it was; merged/,
            # gguf/, ollama/ go too: nothing made from the old run survives it.
            run.clear()
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config_file)
    return resume


def train(cfg: Config, callbacks: list[Any] | None = None, log=print, strategy: Strategy | None = None) -> Run:
    """Run one training job from a validated config; returns the run folder.

    `strategy`: as the launcher decided it; None decides it here, from the config and the processes taking part.
    """
    from transformers import PrinterCallback, set_seed

    from tuneforge.data.collate import PackCollator
    from tuneforge.data.prepare import Prepared, prepare
    from tuneforge.data.render import trained_modes
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.kernels import apply_kernels, compile_layers
    from tuneforge.model.load import load_model, load_tokenizer, save_random_base

    procs = Processes.from_env()
    strategy = strategy or Strategy.of(cfg.distributed, procs.world_size)
    init_processes(strategy, procs)
    run = Run(Path(cfg.output.dir))
    resume = _start(cfg, run, procs, log)
    set_seed(cfg.train.seed)

    tokenizer = load_tokenizer(cfg.model)
    if procs.is_main:
        continued = continued_adapter(cfg.method.adapter) if cfg.method.adapter is not None else None
        run.start(cfg, tokenizer.chat_template, resumed=resume is not None, continued=continued)
    objective = Objective.of(cfg.method)
    with node_first(procs):  # tokenized once per node; the other processes read the cache
        if objective.sample == "prompt":  # GRPO (issue 27): prompts rendered for sampling, not (ids, labels)
            from tuneforge.data.prompts import prepare_prompts

            data = Prepared(prepare_prompts(cfg, tokenizer, log), None)
        else:
            data = prepare(cfg.data, tokenizer, log, objective=objective)
    if procs.is_main:  # chat, eval and serve default to the mode the run trained in
        modes = trained_modes(cfg.data.thinking, data.with_reasoning, data.without_reasoning)
        run.record_thinking(cfg.data.thinking, modes)
    if not objective.packs and cfg.data.packing:
        log(f"data.packing: not used by method.objective: {objective.name}; its rows are padded")
    if objective.ordered and cfg.data.group_by_length:
        log(f"data.group_by_length: not used by method.objective: {objective.name}; {objective.ordered}")
    if cfg.train.preflight:
        from tuneforge.estimate.preflight import preflight

        preflight(cfg, data.train, log if procs.is_main else lambda *_: None)
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
        stop = StopOnSignal(log)
        common = dict(
            model=model,
            args=training_arguments(cfg, mine, data.validation is not None, strategy),
            train_dataset=data.train,
            eval_dataset=data.validation,
            processing_class=tokenizer,
            callbacks=[MetricsCallback(run, resume), ProgressBarCallback(), stop, *own_callbacks, *(callbacks or [])],
        )
        trainer = trainer_class(objective).build(cfg, tokenizer.pad_token_id, log, **common)
        collator = trainer.data_collator
        trainer.remove_callback(PrinterCallback)  # our bar and metrics.jsonl show the logs
        log(f"training → {run.root}" + (f" (resuming from {resume})" if resume else ""))
        with stop.installed():
            trainer.train(resume_from_checkpoint=resume)
    step = trainer.state.global_step
    if step < trainer.state.max_steps:
        if stop.received:
            checkpoint = run.checkpoints / f"checkpoint-{step}"
            raise Interrupted(signal.Signals(stop.received).name, step, str(checkpoint), 128 + stop.received)
        log(f"stopped early at step {step}; resume with train.resume=auto")
        return run
    totals = trainer.summary()  # every process: it sums their counts
    target = _save_final(trainer, cfg, run, tokenizer)
    if trainer.is_world_process_zero():
        summary = totals | {
            "steps": step,
            "epochs": trainer.state.epoch,
            "resumed_from": resume,
            "output": str(target),
            "packing": ("varlen" if collator.varlen else "rows") if isinstance(collator, PackCollator) else "off",
            "loss": "liger_fused" if trainer.lean_loss and trainer.lean_loss.liger_used else cfg.train.loss,
            "kernels": kernels,
            "compile": cfg.train.compile,
            "objective": objective.name,
        }
        atomic_write_json(run.summary, summary)
        run.record(target.name, target, made_from={"config": cfg.fingerprint(), "steps": step})
        plot_loss(run)
        if objective.reward is not None:
            plot_rewards(run)
        wall = summary["wall_time_s"]
        log(f"done: {target} ({summary['steps']} steps, {wall:.0f} s, {summary['tokens_per_s']:.0f} tokens/s)")
        log(json.dumps({k: summary[k] for k in ("train_loss", "tokens_seen", "loss_tokens")}))
    return run
