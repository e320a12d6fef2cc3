"""LoRA DPO against LoRA SFT: peak training memory at the same micro-batch (rows through the model) and length.

Both train the same random-weight base (the test suite's tiny Qwen3 shape by default, real vocabulary) through
tuneforge's own trainers and TrainingArguments, each in a fresh process: SFT on `--rows` rows of random token ids at
`--max-length` (every token labelled); DPO on `--rows` / 2 pairs, each a chosen and a rejected row of the same
length (a quarter prompt, three quarters answer), so both run `--rows` rows of `--max-length` tokens per micro-batch.
DPO's reference is TRL's frozen copy of the adapter (no copy of the weights): the ratio shows what DPO's second
forward (no gradients) and the adapter copy cost. Measured: on the CPU the peak RSS while training minus the
process's idle baseline (after imports and data, before the model), with MALLOC_MMAP_THRESHOLD_=65536 so RSS follows
the live tensors (as bench/estimate_accuracy.py); on a GPU torch.cuda.max_memory_allocated.

    python bench/preference_memory.py                                  # CPU: tiny shape, 4 rows × 512 tokens, fp32
    python bench/preference_memory.py --device cuda --shape 8B --max-length 2048 --rows 2 --checkpointing  # a GPU

Prints a Markdown table with the DPO / SFT ratio and writes bench/results/preference_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from estimate_accuracy import add_shape_flags, rss, shape_config
from machine import machine
from qlora_memory import TOKENIZER, add_base_flag, release_freed_heap, training_peak, write_base
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("sft", "dpo")
TARGET = 1.1  # issue 15: LoRA DPO peak memory at most 1.1 × LoRA SFT's


def job_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """The tuneforge config of one measured objective: `rows` rows per micro-batch either way."""
    pairs = spec["objective"] == "dpo"
    return {
        "model": {"name_or_path": spec["model"], "attn": "sdpa"},
        "data": {
            "datasets": [{"path": "(random tokens)"}],
            "max_length": spec["max_length"],
            "packing": False,
            "group_by_length": False,
        },
        "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "objective": spec["objective"]},
        "train": {
            "max_steps": spec["steps"],
            "per_device_batch_size": spec["rows"] // 2 if pairs else spec["rows"],
            "gradient_checkpointing": spec["checkpointing"],
            "save_steps": 10**6,
            "logging_steps": 1,
        },
        "output": {"dir": spec["out"]},
    }


def random_data(spec: dict[str, Any]):
    """Random token rows (SFT, every token labelled) or pairs (DPO: a quarter prompt, then the answer), full length."""
    import datasets
    import torch

    generator = torch.Generator().manual_seed(0)
    length, samples = spec["max_length"], spec["rows"] * spec["steps"]

    def ids(count: int, width: int) -> list[list[int]]:
        return torch.randint(0, 151_000, (count, width), generator=generator).tolist()

    if spec["objective"] == "sft":
        rows = ids(samples, length)
        return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    pairs, prompt = samples // 2, length // 4
    answer = length - prompt
    return datasets.Dataset.from_dict(
        {
            "prompt_ids": ids(pairs, prompt),
            "chosen_ids": ids(pairs, answer),
            "rejected_ids": ids(pairs, answer),
            "chosen_trained": [answer] * pairs,
            "rejected_trained": [answer] * pairs,
            "length": [length] * pairs,
        }
    )


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one objective for a few steps and measure its peak memory."""
    import torch
    from transformers import AutoTokenizer

    from tuneforge.config import validate
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model
    from tuneforge.objective import Objective
    from tuneforge.rundir import Run
    from tuneforge.train.run import trainer_class, training_arguments

    cfg = validate(job_raw(spec))
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    dataset = random_data(spec)
    release_freed_heap()
    baseline = rss()

    quiet = lambda *_: None  # noqa: E731
    model = apply_method(load_model(cfg.model, cfg.method, log=quiet), cfg.method, quiet)
    peak = training_peak(cuda)
    common = {
        "model": model,
        "args": training_arguments(cfg, Run(Path(spec["out"])), False),
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "callbacks": [peak],
    }
    # data.packing is off: sft gets the padding collator, as before.
    trainer = trainer_class(Objective.of(cfg.method)).build(cfg, tokenizer.pad_token_id, quiet, **common)
    trainer.train()
    measured = peak.measured(baseline)
    return {"measured_bytes": measured, "baseline_rss_bytes": baseline}


def table(rows: list[dict[str, Any]], ratio: float) -> str:
    """Markdown: peak per objective and the DPO / SFT ratio."""
    mib = 2**20
    lines = ["| objective | micro-batch | tokens per row | peak | vs SFT |", "|---|---|---:|---:|---:|"]
    for r in rows:
        batch = f"{r['rows'] // 2} pairs ({r['rows']} rows)" if r["objective"] == "dpo" else f"{r['rows']} rows"
        vs = f"{ratio:.3f}×" if r["objective"] == "dpo" else "1×"
        lines.append(
            f"| {r['objective']} | {batch} | {r['max_length']} | {r['measured_bytes'] / mib:,.1f} MiB | {vs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flags(parser)
    parser.add_argument("--rows", type=int, default=4, help="rows per micro-batch (SFT samples; twice the DPO pairs)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preference_memory.json")
    add_base_flag(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.rows % 2:
        parser.error("--rows must be even: DPO runs them as pairs")
    if args.device == "cpu":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the workers; see the docstring
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-preference-bench-") as work:
        base = args.base or write_base(shape_config(args.shape), Path(work) / "base")
        for objective in OBJECTIVES:
            spec = {
                "model": str(base),
                "objective": objective,
                "rows": args.rows,
                "max_length": args.max_length,
                "steps": args.steps,
                "checkpointing": args.checkpointing,
                "out": str(Path(work) / objective),
            }
            rows.append({**spec, **run_worker(__file__, spec, objective)})
            print(f"{objective}: {rows[-1]['measured_bytes'] / 2**20:,.1f} MiB", file=sys.stderr)
    ratio = rows[1]["measured_bytes"] / rows[0]["measured_bytes"]
    record = {
        "shape": args.shape,
        "device": args.device,
        "results": [{k: v for k, v in r.items() if k not in ("model", "out")} for r in rows],
        "dpo_over_sft": ratio,
        "target": TARGET,
        "environment": machine("transformers", "peft", "trl"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows, ratio))
    print(f"\nDPO / SFT peak: {ratio:.3f} (target <= {TARGET}); wrote {args.out}")


if __name__ == "__main__":
    main()
