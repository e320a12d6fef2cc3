"""LoRA SFT, DPO and GRPO on the same model and rows: loss tokens per second and peak training memory.

All three train the same random-weight base (the test suite's tiny Qwen3 shape by default, real vocabulary) through
tuneforge's own trainers, each in a fresh process, `--rows` rows of `--max-length` tokens per micro-batch: SFT on
random token rows, every token labelled (train.loss chunked, the default); DPO on `--rows` / 2 pairs, a quarter
prompt and three quarters answer (bench/preference_memory.py's data); GRPO on one prompt of a quarter of the length
whose `--rows` completions (num_generations) are sampled up to the other three quarters, beta `--beta`. Loss tokens
are the tokens a loss scores (SFT: every label; DPO: both answers; GRPO: the completions), per second of the steps
after the first (which warms up). GRPO's sampling (TRL's `_generate`) is timed apart: its "loss path" figure leaves it
out (what the log-probability path costs — reference, policy forward and backward — which GRPO shares with DPO),
"with generation" keeps it. Memory as
bench/preference_memory.py measures it (CPU: peak RSS minus the idle baseline; GPU: torch.cuda.max_memory_allocated).
`--trl-path` adds DPO and GRPO through TRL's own CPU log-probabilities (model/logprob.py off): the figures before it.

    python bench/logprob_speed.py                          # CPU: tiny shape, 4 rows × 512 tokens, 4 steps
    python bench/logprob_speed.py --trl-path               # and the TRL path, for the before/after
    python bench/logprob_speed.py --device cuda --shape 0.6B --max-length 1024 --rows 8

Prints a Markdown table with ratios to SFT and writes bench/results/logprob_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from estimate_accuracy import add_shape_flags, rss, shape_config
from machine import command, machine
from preference_memory import job_raw, random_data
from qlora_memory import TOKENIZER, add_base_flag, release_freed_heap, training_peak, write_base
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"speed": 0.5, "memory": 1.1}  # issue 27: DPO and GRPO ≥ 0.5× SFT's loss tokens/s, ≤ 1.1× its memory


def grpo_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """The GRPO config: one prompt group of `rows` completions per step, the completions three quarters long."""
    raw = job_raw({**spec, "objective": "sft"})
    raw["method"] |= {
        "objective": "grpo",
        "grpo": {
            "num_generations": spec["rows"],
            "max_completion_length": spec["max_length"] - spec["max_length"] // 4,
            "beta": spec["beta"],
            "rewards": [{"name": "length"}],
            "completions_every": 0,
        },
    }
    raw["train"]["per_device_batch_size"] = spec["rows"]
    return raw


def prompt_data(spec: dict[str, Any], tokenizer: Any):
    """GRPO's prompts as data/prompts.py lays them out: a quarter of the length in tokens (" a" is one token)."""
    import datasets

    text = "a" + " a" * (spec["max_length"] // 4 - 1)
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    count = spec["steps"]
    return datasets.Dataset.from_dict(
        {"prompt": [text] * count, "answer": [""] * count, "tools": ["[]"] * count, "length": [length] * count}
    )


def step_clock(trainer: Any) -> Any:
    """A callback recording each step's wall time and loss tokens, and the time GRPO spent sampling in it."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        steps: list[dict[str, float]] = []
        sampling = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.tokens, self.sampling = time.perf_counter(), trainer.loss_tokens, 0.0

        def on_step_end(self, args, state, control, **kwargs):
            wall = time.perf_counter() - self.start
            self.steps.append(
                {"wall_s": wall, "loss_tokens": trainer.loss_tokens - self.tokens, "sampling_s": self.sampling}
            )

    clock = Clock()
    generate = getattr(trainer, "_generate", None)  # GRPO's sampling alone: its reference forward stays timed
    if generate is not None:

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                clock.sampling += time.perf_counter() - start

        trainer._generate = timed
    return clock


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one objective for `steps` steps; its step clock and peak memory."""
    import contextlib

    import torch
    from transformers import AutoTokenizer

    from tuneforge.config import validate
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model
    from tuneforge.objective import Objective
    from tuneforge.rundir import Run
    from tuneforge.train.run import trainer_class, training_arguments

    if spec["trl_path"]:
        import tuneforge.train.preference as preference

        preference.cpu_log_probs = contextlib.nullcontext  # TRL's own CPU log-probabilities
    grpo = spec["objective"] == "grpo"
    cfg = validate(grpo_raw(spec) if grpo else job_raw(spec))
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    dataset = prompt_data(spec, tokenizer) if grpo else random_data(spec)
    release_freed_heap()
    baseline = rss()
    quiet = lambda *_: None  # noqa: E731
    model = apply_method(load_model(cfg.model, cfg.method, log=quiet), cfg.method, quiet)
    peak = training_peak(torch.cuda.is_available())
    common = {
        "model": model,
        "args": training_arguments(cfg, Run(Path(spec["out"])), False),
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "callbacks": [peak],
    }
    trainer = trainer_class(Objective.of(cfg.method)).build(cfg, tokenizer.pad_token_id, quiet, **common)
    clock = step_clock(trainer)
    trainer.add_callback(clock)
    trainer.train()
    return {"measured_bytes": peak.measured(baseline), "steps": clock.steps}


def rates(steps: list[dict[str, float]]) -> dict[str, float]:
    """Loss tokens per second over the steps after the first: with and without GRPO's sampling."""
    timed = steps[1:] or steps
    tokens = sum(s["loss_tokens"] for s in timed)
    wall = sum(s["wall_s"] for s in timed)
    sampling = sum(s["sampling_s"] for s in timed)
    return {"loss_tokens_per_s": tokens / (wall - sampling), "with_generation_tokens_per_s": tokens / wall}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: loss tokens/s and peak per measured run, each against SFT's."""
    lines = [
        "| run | loss tokens/s | vs SFT | with generation | peak | vs SFT |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['loss_tokens_per_s']:,.0f} | {r['speed_vs_sft']:.2f}× | "
            f"{r['with_generation_tokens_per_s']:,.0f} | {r['measured_bytes'] / 2**20:,.1f} MiB | "
            f"{r['memory_vs_sft']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flags(parser)
    parser.add_argument("--rows", type=int, default=4, help="rows per micro-batch (twice the DPO pairs)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is not timed")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO's KL weight (0: no reference forward)")
    parser.add_argument("--trl-path", action="store_true", help="also DPO and GRPO through TRL's own CPU log-probs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logprob_speed.json")
    add_base_flag(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.rows % 2:
        parser.error("--rows must be even: DPO runs them as pairs")
    if args.device == "cpu":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the workers; see bench/preference_memory.py
    runs = [("sft", False), ("dpo", False), ("grpo", False)]
    runs += [("dpo", True), ("grpo", True)] if args.trl_path else []
    environment = machine("transformers", "peft", "trl")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tf-logprob-bench-") as work:
        base = args.base or write_base(shape_config(args.shape), Path(work) / "base")
        for objective, trl_path in runs:
            name = f"{objective} (TRL path)" if trl_path else objective
            spec = {
                "model": str(base),
                "objective": objective,
                "trl_path": trl_path,
                "rows": args.rows,
                "max_length": args.max_length,
                "steps": args.steps,
                "beta": args.beta,
                "checkpointing": False,
                "out": str(Path(work) / name.replace(" ", "_")),
            }
            result = run_worker(__file__, spec, name)
            rows.append({"name": name, **spec, **result, **rates(result["steps"])})
            print(f"{name}: {rows[-1]['loss_tokens_per_s']:,.0f} loss tokens/s", file=sys.stderr)
    sft = rows[0]
    for r in rows:
        r["speed_vs_sft"] = r["loss_tokens_per_s"] / sft["loss_tokens_per_s"]
        r["memory_vs_sft"] = r["measured_bytes"] / sft["measured_bytes"]
    record = {
        "command": command(),
        "shape": args.shape,
        "device": args.device,
        "results": [{k: v for k, v in r.items() if k not in ("model", "out")} for r in rows],
        "targets": TARGETS,
        "environment": environment,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows))
    met = all(r["speed_vs_sft"] >= TARGETS["speed"] and r["memory_vs_sft"] <= TARGETS["memory"] for r in rows[1:3])
    print(
        f"\nDPO and GRPO against SFT: {'targets met' if met else 'targets NOT met'} "
        f"(≥ {TARGETS['speed']}× loss tokens/s, ≤ {TARGETS['memory']}× peak); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
