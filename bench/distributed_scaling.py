"""Multi-process scaling on CPU: the medical_o1 demo job on 1 process, then on 2, in one invocation.

Both runs train the same LoRA job on the same global batches (per-device batch = global batch / processes,
seeded order, no length grouping), a tiny Qwen3 with the real 151,936-token vocabulary and tokenizer, through
`tuneforge train --nproc N` (gloo on CPU). Tokens/s is over the training loop (summary.json); wall time includes
start-up. Scaling efficiency = tokens/s on N processes / (N × tokens/s on 1). With --repeats, the process
counts take turns and each keeps its fastest run (other work on the machine only ever slows a run down).
Not part of the tests.

    .venv/bin/python bench/distributed_scaling.py --nproc 1 2 --steps 8 --batch 4 --max-length 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import ASSETS, machine

ROOT = Path(__file__).resolve().parents[1]
DATA = ASSETS / "data" / "medical_o1_reasoning_demo.json"
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Qwen3 the tests use (conftest.make_tiny_qwen3)


def job_config(model_dir: Path, work: Path, nproc: int, args: argparse.Namespace) -> Path:
    """The job for `nproc` processes: same global batch, same samples, same order."""
    raw = {
        "model": {"name_or_path": str(model_dir), "dtype": "fp32"},
        "data": {
            "datasets": [{"path": str(DATA), "format": "reasoning"}],
            "max_length": args.max_length,
            "truncation": "truncate",
            "group_by_length": False,
            "cache_dir": str(work / "cache"),
        },
        "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0},
        "train": {
            "max_steps": args.steps,
            "per_device_batch_size": args.batch // nproc,
            "logging_steps": 1,
            "save_steps": 100_000,
            "learning_rate": 1e-4,
        },
        "output": {"dir": str(work / f"run-{nproc}"), "overwrite": True},
        "distributed": {"nproc": nproc},
    }
    path = work / f"job-{nproc}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run(config: Path, work: Path) -> dict[str, float]:
    """Train once in a fresh `tuneforge train`; its summary.json plus the wall time with start-up."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tuneforge"), "train", str(config)], capture_output=True, text=True, cwd=work
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{config.name} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(Path(yaml.safe_load(config.read_text())["output"]["dir"], "summary.json").read_text())
    return summary | {"wall_with_startup_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="Process counts; the first is the base.")
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps per run.")
    parser.add_argument("--batch", type=int, default=4, help="Global batch (divisible by every process count).")
    parser.add_argument("--max-length", type=int, default=1024, help="Samples are truncated to this many tokens.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per process count; the fastest is kept.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed_scaling.json")
    args = parser.parse_args()
    if any(args.batch % n for n in args.nproc):
        parser.error(f"--batch {args.batch} must be divisible by every --nproc value")

    from conftest import make_tiny_qwen3

    from tuneforge.io import atomic_write_json

    host = machine("transformers", "accelerate", "peft")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_tiny_qwen3(work / "tiny-qwen3")
        runs = [
            {"processes": n, **run(job_config(model_dir, work, n, args), work)}
            for _ in range(args.repeats)
            for n in args.nproc
        ]
    rows = [max((r for r in runs if r["processes"] == n), key=lambda r: r["tokens_per_s"]) for n in args.nproc]

    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
        row["scaling_efficiency"] = round(row["speedup"] * base["processes"] / row["processes"], 3)
    keys = [
        "processes",
        "tokens_seen",
        "padding_fraction",
        "train_loss",
        "wall_time_s",
        "wall_with_startup_s",
        "tokens_per_s",
        "speedup",
        "scaling_efficiency",
    ]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(round(row[k], 4) if isinstance(row[k], float) else row[k]) for k in keys))
    command = " ".join([".venv/bin/python", "bench/distributed_scaling.py", *sys.argv[1:]])
    atomic_write_json(
        args.out,
        {
            "benchmark": "distributed_scaling",
            "command": command,
            "machine": host,
            "job": {
                "data": DATA.name,
                "model": "tiny Qwen3 (tests/conftest.py TINY_QWEN3)",
                "steps": args.steps,
                "global_batch": args.batch,
                "max_length": args.max_length,
                "method": "lora r8, fp32",
            },
            "baseline_processes": base["processes"],
            "repeats": args.repeats,
            "rows": [{k: row[k] for k in keys} for row in rows],
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
