"""tuneforge GRPO (LoRA) against TRL's GRPOTrainer used directly: peak training memory and step time.

Both train the same random-weight base (the test suite's tiny Qwen3 shape by default, real vocabulary) on the same
prompts ("What is i + i?", thinking off) with the same settings: LoRA r 8 / alpha 16 on all linear layers, dropout 0,
`--batch` completions per step in groups of `--generations`, `--completion` new tokens at most, beta 0, TRL's default
loss (dapo), the same seed and one reward (DAPO's soft over-long penalty). tuneforge runs through its own path
(config → data/prompts.py → model/adapters.py → train/grpo.py, run-folder callbacks included); TRL gets the model
name, a peft LoraConfig and conversational prompts, as its documentation shows. Each runs in a fresh process.
Measured: step time as the median of the steps after the first (which warms up), and the peak memory from train
begin (CPU: peak RSS minus the idle baseline, with MALLOC_MMAP_THRESHOLD_=65536 so RSS follows live tensors, as
bench/preference_memory.py; GPU: torch.cuda.max_memory_allocated).

    python bench/grpo.py                                      # CPU, tiny shape
    python bench/grpo.py --device cuda --shape 0.6B --completion 256 --batch 16
    python bench/grpo.py --device cuda --shape 8B --completion 1024 --batch 8 --generation vllm   # with vLLM

Prints a Markdown table with tuneforge / TRL ratios and writes bench/results/grpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from estimate_accuracy import add_shape_flags, rss, shape_config
from machine import command, machine
from qlora_memory import TOKENIZER, add_base_flag, release_freed_heap, training_peak, write_base
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("trl", "tuneforge")
SETTINGS = ("prompts", "batch", "generations", "completion", "steps", "generation")  # the same on both sides
TARGETS = {"memory": 1.05, "speed": 0.95}  # issue 27: ≤ 1.05× TRL's memory, ≥ 0.95× its speed


def questions(n: int) -> list[str]:
    """The prompts both sides train on."""
    return [f"What is {i} + {i}?" for i in range(n)]


def step_timer() -> Any:
    """A callback recording the wall time of each optimizer step."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    return Timer()


def length_reward(completion_ids: list[list[int]], **_: Any) -> list[float]:
    """TRL side: the same over-long penalty tuneforge's `length` reward gives (cache = a quarter of the limit)."""
    from tuneforge.train.rewards import overlong_penalty

    limit = int(os.environ["BENCH_COMPLETION"])
    return [overlong_penalty(len(ids), limit, max(1, limit // 4)) for ids in completion_ids]


def tuneforge_trainer(spec: dict[str, Any], callbacks: list) -> Any:
    """tuneforge's GRPO trainer, built as `tuneforge train` builds it."""
    from tuneforge.config import validate
    from tuneforge.data.prompts import prepare_prompts
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model, load_tokenizer
    from tuneforge.rundir import Run
    from tuneforge.train.grpo import GRPOTrainer
    from tuneforge.train.run import training_arguments

    data = Path(spec["out"]) / "questions.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions(spec["prompts"])))
    cfg = validate(
        {
            "model": {"name_or_path": spec["model"], "attn": "sdpa"},
            "data": {"datasets": [{"path": str(data)}], "thinking": "off", "cache_dir": spec["out"] + "/cache"},
            "method": {
                "type": "lora",
                "rank": 8,
                "alpha": 16,
                "dropout": 0.0,
                "objective": "grpo",
                "grpo": {
                    "num_generations": spec["generations"],
                    "max_completion_length": spec["completion"],
                    "rewards": [{"name": "length"}],
                    "completions_every": 0,
                    "generation": spec.get("generation", "transformers"),
                },
            },
            "train": {"max_steps": spec["steps"], "per_device_batch_size": spec["batch"], "save_steps": 10**6},
            "output": {"dir": spec["out"] + "/run"},
        }
    )
    quiet = lambda *_: None  # noqa: E731
    tokenizer = load_tokenizer(cfg.model)
    dataset = prepare_prompts(cfg, tokenizer, quiet)
    model = apply_method(load_model(cfg.model, cfg.method, log=quiet), cfg.method, quiet)
    run = Run(Path(cfg.output.dir))
    args = training_arguments(cfg, run, False)
    return GRPOTrainer.build(
        cfg,
        tokenizer.pad_token_id,
        quiet,
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def trl_trainer(spec: dict[str, Any], callbacks: list) -> Any:
    """TRL's GRPOTrainer as its documentation uses it: a model name, a LoraConfig, conversational prompts."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    os.environ["BENCH_COMPLETION"] = str(spec["completion"])
    prompts = [[{"role": "user", "content": q}] for q in questions(spec["prompts"])]
    args = GRPOConfig(
        output_dir=spec["out"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        num_generations=spec["generations"],
        max_completion_length=spec["completion"],
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        chat_template_kwargs={"enable_thinking": False},
        gradient_checkpointing=False,  # TRL's default is on; tuneforge's train.gradient_checkpointing is off
        use_vllm=spec.get("generation") == "vllm",  # colocated, TRL's default vllm_mode
        bf16=torch.cuda.is_available(),
        model_init_kwargs={"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32},
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        seed=42,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return GRPOTrainer(
        model=spec["model"],
        reward_funcs=length_reward,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(TOKENIZER),
        peft_config=lora,
        callbacks=callbacks,
    )


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one side for `steps` steps; its step times and peak memory."""
    import torch

    release_freed_heap()
    baseline = rss()
    peak, timer = training_peak(torch.cuda.is_available()), step_timer()
    build = tuneforge_trainer if spec["side"] == "tuneforge" else trl_trainer
    trainer = build(spec, [peak, timer])
    trainer.train()
    return {"measured_bytes": peak.measured(baseline), "step_times_s": timer.times}


def table(rows: list[dict[str, Any]], ratios: dict[str, float]) -> str:
    """Markdown: peak and step time per side, tuneforge / TRL ratios."""
    lines = ["| side | peak | step time | vs TRL (memory) | vs TRL (speed) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        vs = (f"{ratios['memory']:.3f}×", f"{ratios['speed']:.3f}×") if r["side"] == "tuneforge" else ("1×", "1×")
        lines.append(
            f"| {r['side']} | {r['measured_bytes'] / 2**20:,.1f} MiB | {r['step_s']:.2f} s | {vs[0]} | {vs[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flags(parser, max_length=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="completions per device and step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--completion", type=int, default=32, help="max_completion_length")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--generation", default="transformers", choices=["transformers", "vllm"], help="sampler")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo.json")
    add_base_flag(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.device == "cpu":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the workers; see the docstring
    environment = machine("transformers", "peft", "trl")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-grpo-bench-") as work:
        base = args.base or write_base(shape_config(args.shape), Path(work) / "base")
        for side in SIDES:
            spec = {
                "side": side,
                "model": str(base),
                "out": str(Path(work) / side),
                **{k: getattr(args, k) for k in SETTINGS},
            }
            result = run_worker(__file__, spec, side)
            rows.append({**spec, **result, "step_s": statistics.median(result["step_times_s"][1:])})
            print(
                f"{side}: {rows[-1]['measured_bytes'] / 2**20:,.1f} MiB, {rows[-1]['step_s']:.2f} s/step",
                file=sys.stderr,
            )
    trl, ours = rows
    ratios = {"memory": ours["measured_bytes"] / trl["measured_bytes"], "speed": trl["step_s"] / ours["step_s"]}
    record = {
        "command": command(),
        "shape": args.shape,
        "device": args.device,
        "results": [{k: v for k, v in r.items() if k not in ("model", "out")} for r in rows],
        "ratios": ratios,
        "targets": TARGETS,
        "environment": environment,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows, ratios))
    print(
        f"\ntuneforge / TRL: memory {ratios['memory']:.3f}× (target ≤ {TARGETS['memory']}), speed "
        f"{ratios['speed']:.3f}× (target ≥ {TARGETS['speed']}); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
