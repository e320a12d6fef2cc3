"""The GPU checks in one command: each bench as a subprocess with its own timeout, inside one wall-clock budget.

First one random base that the model steps share (see steps()). Then, most valuable first: (1) LoRA training
throughput and peak memory on the Qwen3-8B shape (train_throughput.py), (2) QLoRA 8B peak memory at 2,048 tokens
(qlora_memory.py; recorded as skipped where bitsandbytes is not installed), (3) DPO against SFT peak memory on the
8B shape (preference_memory.py), (4) `tuneforge estimate` against measured memory for an 8B row
(estimate_accuracy.py), (5) batched generation on the tiny model (generate_batch.py), (6) GRPO steps on the
Qwen3-0.6B shape, tuneforge against TRL used directly (grpo.py; vLLM sampling where vllm is importable, transformers'
generate otherwise; its own 0.6B base). A failed or timed-out step does not stop the others; a step that would start
with under its `min_s` left (MIN_STEP_S unless it says more) is skipped. Each step writes its JSON
into --out-dir (flat names, at most 8 files with the summary and a log: the device returns no more); gpu_check.json
there records per step the command, wall seconds, exit status and result file, or the reason; the exit status is 1
when a step failed or timed out.

    python bench/gpu_check.py --device cuda               # the device call (scripts/gpu_bundle.sh prints it)
    python bench/gpu_check.py --device cpu --tiny --out-dir /tmp/check   # the same steps, tiny shapes, on the CPU
    python bench/gpu_check.py --device cuda --only grpo   # GRPO alone (docs/grpo.md): the full run rarely has time left

Each step's timeout is its expected time on one H200 with a margin (see steps(); docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from estimate_accuracy import shape_config
from machine import ASSETS, ROOT, machine

BENCH = ROOT / "bench"
QWEN3_8B = ASSETS / "model-configs" / "Qwen3-8B.config.json"
MIN_STEP_S = 20  # a step that would get less than this is skipped: it could not finish
STEP_NAMES = ("base", "throughput", "qlora", "preference", "estimate", "generate", "grpo")
OWN_MODEL = {"generate", "grpo"}  # steps that do not train on the shared base
# What the steps run on where the device image and the carried wheels (scripts/gpu_bundle.sh) could differ.
VERSIONS = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "fsspec", "bitsandbytes")


@dataclass
class Step:
    """One bench run: its name, result file (in --out-dir; None for the base), arguments, and timeout in seconds."""

    name: str
    result: str | None
    args: list[str]
    timeout_s: int
    skip: str | None = None  # why it does not run here
    min_s: int = MIN_STEP_S  # skipped when less than this is left: it could not finish


def steps(device: str, tiny: bool, config: Path, base: Path) -> list[Step]:
    """The checks in order of value: the GPU shapes, or with `tiny` the same benches at the smallest sizes.

    First one random base for `config` (tuneforge's random-init path, as each bench would write it), which the
    model steps then share: building an 8B one is serial CPU work (69 M parameters/s measured here), so five of
    them would take the whole budget.
    """
    bnb = None if importlib.util.find_spec("bitsandbytes") else "skipped: bitsandbytes not installed"
    sampler = "vllm" if device == "cuda" and importlib.util.find_spec("vllm") else "transformers"
    shared = ["--base", str(base)]
    if tiny:
        return [
            Step("base", None, ["qlora_memory.py", "--config", str(config), "--save-base", str(base)], 120),
            Step("throughput", "train_throughput.json",
                 ["train_throughput.py", "--device", device, "--only", "tiny", "--steps", "1", "--batch", "1", *shared],
                 120),
            Step("qlora", "qlora_memory.json",
                 ["qlora_memory.py", "--config", str(config), "--seq", "16", "--batch", "1", "--steps", "1", *shared],
                 120, bnb),
            Step("preference", "preference_memory.json",
                 ["preference_memory.py", "--device", device, "--shape", "tiny", "--max-length", "32", "--rows", "2",
                  "--steps", "1", *shared], 120),
            Step("estimate", "estimate_accuracy.json",
                 ["estimate_accuracy.py", "--device", device, "--shapes", "tiny", "--methods", "lora",
                  "--checkpointing", "on", "--layouts", "packed", "--max-length", "32", "--batch", "1", "--steps", "1",
                  *shared], 120),
            Step("generate", "generate_batch.json",
                 ["generate_batch.py", "--batch-sizes", "1", "2", "--prompts", "2", "--max-tokens", "4", "--repeats",
                  "1"], 120),
            Step("grpo", "grpo.json",
                 ["grpo.py", "--device", device, "--prompts", "2", "--batch", "2", "--generations", "2",
                  "--completion", "4", "--steps", "2", "--generation", sampler], 180),
        ]  # fmt: skip
    # Expected on one H200 (16 cores), not yet measured: a process and its imports ~10 s; the 8B base (8.2e9
    # parameters built serially at ~100 M/s, then 16 GB written) ~110 s; loading it onto the GPU from the page cache
    # ~15 s; a LoRA step of 16k tokens with checkpointing (~6 × 8.2e9 × 16k FLOPs at ~400 TFLOP/s) ~2 s. So: base
    # ~110 s; throughput 2 configurations × (load + ≤ 6 steps + MFU matmuls) ~90 s; qlora a LoRA and a QLoRA worker
    # (quantizing while loading) ~95 s; preference 2 workers ~60 s; estimate one row ~35 s; generate ~20 s: ~410 s
    # of the 450 s budget. Timeouts: about 1.3× to 1.8× these. grpo (the 0.6B base ~10 s, then two workers: load,
    # 3 steps of 16 completions × 256 tokens, ~8 s each with generate, ~4 s with vLLM after its ~60 s start-up)
    # ~80 s with generate, ~180 s with vLLM: it runs alone (--only grpo) or where the budget has that left.
    return [
        Step("base", None, ["qlora_memory.py", "--config", str(config), "--save-base", str(base)], 200),
        Step("throughput", "train_throughput.json",
             ["train_throughput.py", "--device", device, "--model-config", str(config), "--only", "@2048",
              "--steps", "6", "--batch", "8", *shared], 150),
        Step("qlora", "qlora_memory.json",
             ["qlora_memory.py", "--config", str(config), "--seq", "2048", "--batch", "1", "--steps", "3", *shared],
             150, bnb),
        Step("preference", "preference_memory.json",
             ["preference_memory.py", "--device", device, "--shape", "8B", "--max-length", "2048", "--rows", "2",
              "--steps", "2", "--checkpointing", *shared], 100),
        Step("estimate", "estimate_accuracy.json",
             ["estimate_accuracy.py", "--device", device, "--shapes", "8B", "--methods", "lora", "--checkpointing",
              "on", "--layouts", "packed", "--max-length", "2048", "--batch", "2", "--steps", "2", *shared], 80),
        Step("generate", "generate_batch.json",
             ["generate_batch.py", "--batch-sizes", "1", "8", "32", "--prompts", "32", "--max-tokens", "64"], 40),
        Step("grpo", "grpo.json",
             ["grpo.py", "--device", device, "--shape", "0.6B", "--prompts", "16", "--batch", "16", "--generations",
              "4", "--completion", "256", "--steps", "3", "--generation", sampler], 300,
             min_s=180 if sampler == "vllm" else 90),
    ]  # fmt: skip


def run_step(step: Step, out_dir: Path, timeout_s: float, scratch: Path) -> dict:
    """Run one step in its own process group (its workers too), echoing its output; its record for the summary.

    The step's temporary files go under `scratch`, removed afterwards: a killed bench leaves its 16 GB random base
    behind, and three of them would fill the device's 64 GiB disk.
    """
    out = ["--out", str(out_dir / step.result)] if step.result else []
    command = [sys.executable, str(BENCH / step.args[0]), *step.args[1:], *out]
    record = {"step": step.name, "command": " ".join(["python", f"bench/{step.args[0]}", *step.args[1:]])}
    tail: collections.deque[str] = collections.deque(maxlen=30)
    start = time.perf_counter()
    scratch.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    # Its own process group: on timeout the whole group goes, the bench's workers (and their GPU memory) with it.
    # Not a new session, which the device machine would leave running after the call ends.
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0
    )

    def echo() -> None:
        for line in proc.stdout:
            print(f"[{step.name}] {line}", end="", flush=True)
            tail.append(line.rstrip())

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = None
    reader.join(timeout=5)
    shutil.rmtree(scratch, ignore_errors=True)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["exit_status"] = status
    if status is None:
        record |= {"status": "timed out", "reason": f"timed out after {timeout_s:.0f} s", "output_tail": list(tail)}
    elif status != 0 or (step.result and not (out_dir / step.result).is_file()):
        reason = f"exit status {status}" if status else f"exit status 0 but no {step.result}"
        record |= {"status": "failed", "reason": reason, "output_tail": list(tail)}
    else:
        record |= {"status": "ok", "result": step.result or "(the shared base)"}
    return record


def version_of(name: str) -> str | None:
    """The installed version of distribution `name`, None where it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def table(records: list[dict]) -> str:
    """Markdown: one line per step."""
    lines = ["| step | status | wall s | result or reason |", "|---|---|---:|---|"]
    for r in records:
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        lines.append(f"| {r['step']} | {r['status']} | {wall} | {r.get('result') or r.get('reason')} |")
    return "\n".join(lines)


def main() -> None:
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results" / "gpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and minimal sizes (proves the steps run)")
    parser.add_argument("--budget", type=float, default=450, help="wall seconds for all steps together")
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, help="run only these steps")
    parser.add_argument(
        "--out-dir", type=Path, default=default_out, help="default: $OUT when set, else bench/results/gpu"
    )
    args = parser.parse_args()
    from tuneforge.io import atomic_write_json

    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    summary = {
        "command": " ".join(["python", "bench/gpu_check.py", *sys.argv[1:]]),
        "budget_s": args.budget,
        "environment": machine(),
        # Read from metadata, not imported: a package that fails to import shows in its step, not here.
        "versions": {name: version_of(name) for name in VERSIONS},
        "steps": [],
    }
    records = summary["steps"]
    with tempfile.TemporaryDirectory(prefix="tf-gpu-check-") as work:
        config = QWEN3_8B
        if args.tiny:
            config = Path(work) / "tiny.config.json"
            config.write_text(json.dumps(shape_config("tiny")))
        wanted, base_written = set(args.only or STEP_NAMES), False
        if wanted - OWN_MODEL:
            wanted.add("base")  # every other step trains on the shared base
        for step in steps(args.device, args.tiny, config, Path(work) / "base"):
            left = deadline - time.perf_counter()
            if step.name not in wanted:
                continue
            if step.skip:
                records.append({"step": step.name, "status": "skipped", "reason": step.skip})
            elif "--base" in step.args and not base_written:
                records.append({"step": step.name, "status": "skipped", "reason": "the shared base was not written"})
            elif left < step.min_s:
                records.append({"step": step.name, "status": "skipped", "reason": f"out of budget ({left:.0f} s left)"})
            else:
                print(f"== {step.name}: timeout {min(step.timeout_s, left):.0f} s, {left:.0f} s left", flush=True)
                records.append(run_step(step, args.out_dir, min(step.timeout_s, left), Path(work) / "tmp" / step.name))
                base_written |= step.name == "base" and records[-1]["status"] == "ok"
            print(f"== {step.name}: {records[-1]['status']}", flush=True)
            atomic_write_json(args.out_dir / "gpu_check.json", summary)  # kept if the call is cut short
    print(table(records))
    print(f"wrote {args.out_dir / 'gpu_check.json'}")
    if any(r["status"] in ("failed", "timed out") for r in records):
        sys.exit(1)  # after the summary: every step ran, and the call's exit status still says one broke


if __name__ == "__main__":
    main()
