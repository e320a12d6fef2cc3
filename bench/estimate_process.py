"""Whole-process rows of bench/estimate_accuracy.py (`--process`): memory as a user measures it, on the CPU.

- train: a real `tuneforge train` (pre-flight on, real data: ../shared/assets alpaca_en_demo, a fresh data cache)
  under `/usr/bin/time`, its peak RSS minus that of an idle interpreter (torch, transformers, peft, trl, datasets and
  tuneforge's CLI imported, nothing run); against the pre-flight's CPU total (tensors, tokenizer, prepared data).
  No allocator tuning: glibc as a user has it.
- serve: the built-in engine (`load_engine`, what `tuneforge serve` runs) loads a base and generates `sequences`
  greedy answers together to the end of the context; the process's peak RSS over its own RSS before loading (same
  imports), against `estimate --serve` for the tokens the longest sequence reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from machine import ASSETS, peak_rss

IMPORTS = "import torch, transformers, peft, trl, datasets, tuneforge.cli, tuneforge.train.run"
DATA = ASSETS / "data" / "alpaca_en_demo.json"


def time_peak(command: list[str]) -> int:
    """Peak RSS in bytes of `command`, as `/usr/bin/time` reports it (its %M, KiB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed:\n{proc.stderr[-4000:]}")
    return int(proc.stderr.strip().splitlines()[-1]) * 1024


def train_raw(base: Path, method: str, checkpointing: bool, work: Path) -> dict[str, Any]:
    """A 4-step run of `base` on real data, batch 2 × up to 512 tokens, LoRA r8 α16 dropout 0.05 or full."""
    lora = {"rank": 8, "alpha": 16, "dropout": 0.05} if method != "full" else {}
    return {
        "model": {"name_or_path": str(base)},
        "data": {
            "datasets": [{"path": str(DATA), "format": "alpaca"}],
            "max_length": 512,
            "cache_dir": str(work / f"cache-{method}"),
        },  # fmt: skip
        "method": {"type": method, **lora},
        "train": {
            "max_steps": 4,
            "per_device_batch_size": 2,
            "gradient_checkpointing": checkpointing,
            "save_steps": 10**6,
            "logging_steps": 1,
        },  # fmt: skip
        "output": {"dir": str(work / f"run-{method}")},
    }


def train_row(base: Path, method: str, checkpointing: bool, work: Path, idle: int) -> dict[str, Any]:
    """Measure one real `tuneforge train` and the pre-flight's estimate of it."""
    import yaml

    from tuneforge.config import validate
    from tuneforge.estimate.memory import Job, estimate, load_shape
    from tuneforge.estimate.steps import plan_steps

    raw = train_raw(base, method, checkpointing, work)
    config = work / f"{method}.yaml"
    config.write_text(yaml.safe_dump(raw))
    peak = time_peak([str(Path(sys.executable).with_name("tuneforge")), "train", str(config)])
    cfg = validate(raw)
    plan = plan_steps(cfg, lambda *_: None)  # the data as the run prepared it (its cache)
    est = estimate(Job.from_config(cfg, load_shape(cfg.model), "cpu", plan.longest, plan.tokens))
    measured = peak - idle
    return {
        "kind": "train", "shape": "tiny", "method": method, "checkpointing": checkpointing, "tokens": plan.tokens,
        "peak_rss_bytes": peak, "idle_rss_bytes": idle, "measured_bytes": measured,
        "estimate": {**est.parts, "total": est.total}, "error": est.total / measured - 1,
    }  # fmt: skip


def serve_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load the engine, generate `sequences` answers to the context's end, report the peak."""
    exec(IMPORTS)  # the same libraries as the idle interpreter, before the baseline
    from qlora_memory import release_freed_heap

    from tuneforge.data.conversation import Message
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec

    release_freed_heap()
    before = peak_rss()
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here
    engine = load_engine(resolve_spec(model=spec["model"]), max_model_len=spec["context"])
    prompts = [[Message("user", f"Question {i}: what is {i} + {i}?")] for i in range(spec["sequences"])]
    results = engine.generate_batch(prompts, SamplingParams(temperature=0), max_batch_size=spec["sequences"])
    reached = max(r.prompt_tokens + r.completion_tokens for r in results)
    return {"measured_bytes": peak_rss() - before, "baseline_rss_bytes": before, "reached_tokens": reached}


def serve_row(base: Path, shape: dict[str, Any], context: int, sequences: int, script: str) -> dict[str, Any]:
    """Measure the engine in a fresh process and `estimate --serve` for the tokens it reached."""
    from worker import run_worker

    from tuneforge.config import validate
    from tuneforge.estimate.memory import Job, Shape
    from tuneforge.estimate.serve import estimate_serve

    spec = {"model": str(base), "context": context, "sequences": sequences}
    measured = run_worker(script, {"serve": spec}, f"serve {sequences} × {context}")
    raw = {"model": {"name_or_path": str(base)}, "data": {"datasets": [{"path": "-"}]}, "method": {"type": "full"},
           "output": {"dir": "-"}}  # fmt: skip
    job = Job.from_config(validate(raw), Shape.from_config(shape), "cpu")
    est = estimate_serve(job, measured["reached_tokens"], sequences)
    parts = {"weights": est.weights, "KV cache": est.kv_cache, "prefill": est.prefill, "overhead": est.overhead}
    return {
        "kind": "serve", "context": context, "sequences": sequences, **measured,
        "estimate": {**parts, "total": est.total}, "error": est.total / measured["measured_bytes"] - 1,
    }  # fmt: skip


def process_rows(work: Path, tiny: Path, serve_base: Path, serve_shape: dict[str, Any], script: str) -> list[dict]:
    """Rows: real `tuneforge train` LoRA with checkpointing and full without; the engine at 1 and 4 sequences."""
    idle = time_peak([sys.executable, "-c", IMPORTS])
    rows = [train_row(tiny, "lora", True, work, idle), train_row(tiny, "full", False, work, idle)]
    rows += [serve_row(serve_base, serve_shape, 1024, n, script) for n in (1, 4)]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "estimate"}), file=sys.stderr, flush=True)
    return rows


def process_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: what ran, measured, estimated, error."""
    mib = 2**20
    lines = ["| process | measured | estimated | error |", "|---|---:|---:|---:|"]
    for r in rows:
        what = (
            f"`tuneforge train`, tiny, {r['method']}, checkpointing {'on' if r['checkpointing'] else 'off'}"
            if r["kind"] == "train"
            else f"engine, {r['sequences']} × {r['reached_tokens']} tokens"
        )
        total = r["estimate"]["total"]
        lines.append(f"| {what} | {r['measured_bytes'] / mib:,.0f} MiB | {total / mib:,.0f} MiB | {r['error']:+.1%} |")
    return "\n".join(lines)
