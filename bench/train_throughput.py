"""Training throughput and memory: tuneforge's defaults against a padded, standard-loss baseline, in one invocation.

The job is the same for both: medical_o1_reasoning_demo.json rendered with the real Qwen3 tokenizer, LoRA r8 on
all linear layers, random-weight Qwen3 models. The baseline pads random batches and computes the plain loss over
full logits; "defaults" overrides nothing, so it measures whatever config.py ships. Each configuration trains in
its own process, so its peak memory (RSS on CPU, max allocated on GPU) is its own.

    python bench/train_throughput.py                    # CPU: tiny model at 1024, Qwen3-0.6B shape at 4096
    python bench/train_throughput.py --device cuda --model-config ../shared/assets/model-configs/Qwen3-8B.config.json

Prints a table with ratios to the baseline and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from machine import ASSETS, TINY, machine, peak_rss
from transformers import TrainerCallback
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ASSETS / "qwen3-tokenizer"
DATA = ASSETS / "data" / "medical_o1_reasoning_demo.json"
QWEN3_0_6B = ASSETS / "model-configs" / "Qwen3-0.6B.config.json"

CONFIGURATIONS = {
    "baseline": {"data": {"packing": False, "group_by_length": False}, "train": {"loss": "standard"}},
    "defaults": {},
}


@dataclass
class Job:
    """One SFT job, run once per configuration."""

    name: str
    model: dict[str, Any]
    max_length: int
    batch: int
    steps: int
    gradient_checkpointing: bool = False


def jobs(args) -> list[Job]:
    """The jobs of this invocation: the CPU pair, or the GPU pair for --model-config."""
    if args.device == "cuda":
        model = json.loads(Path(args.model_config).read_text())
        name = Path(args.model_config).name.removesuffix(".config.json")
        return [
            Job(f"{name} @2048", model, 2048, args.batch or 8, args.steps or 20, True),
            Job(f"{name} @8192", model, 8192, args.batch or 8, args.steps or 10, True),
        ]
    qwen = json.loads(QWEN3_0_6B.read_text())
    return [
        Job("tiny @1024", qwen | TINY, 1024, args.batch or 4, args.steps or 16),
        # Memory row: activation checkpointing in both, as anyone training 0.6B at 4096 on a CPU would.
        Job("0.6B @4096", qwen, 4096, args.batch or 4, args.memory_steps, True),
    ]


def job_config(
    job: Job, overrides: dict[str, Any], model_dir: Path, work: Path, init: str = "random"
) -> dict[str, Any]:
    """The raw tuneforge config of `job` under one configuration's overrides (`init`: random, or a written base)."""
    raw = {
        "model": {"name_or_path": str(model_dir), "init": init, "tokenizer": str(TOKENIZER)},
        "data": {
            "datasets": [{"path": str(DATA), "max_samples": job.batch * job.steps}],
            "max_length": job.max_length,
            "cache_dir": str(work / "cache"),
        },
        "method": {"type": "lora", "rank": 8, "alpha": 16, "target_modules": "all-linear"},
        "train": {
            "epochs": 1,
            "per_device_batch_size": job.batch,
            "logging_steps": 1,
            "save_steps": 100_000,
            "gradient_checkpointing": job.gradient_checkpointing,
            "learning_rate": 1e-4,
        },
        "output": {"dir": str(work / "run"), "overwrite": True},
    }
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return raw


def model_flops_per_token(model: dict[str, Any], lengths: list[int]) -> float:
    """Training FLOPs per token: 6 × matmul parameters plus causal attention, averaged over the sample lengths."""
    hidden, layers = model["hidden_size"], model["num_hidden_layers"]
    heads, kv, head_dim = model["num_attention_heads"], model["num_key_value_heads"], model["head_dim"]
    per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * model["intermediate_size"]
    matmul = layers * per_layer + hidden * model["vocab_size"]  # + lm_head
    # Causal attention: QKᵀ and AV over l(l+1)/2 pairs per sample, forward and backward (×3).
    attention = 6 * layers * heads * head_dim * sum(n * n for n in lengths) / sum(lengths)
    return 6 * matmul + attention


def bf16_peak_flops() -> float:
    """This GPU's measured dense bf16 matmul rate."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * reps / (time.perf_counter() - start)


class TrainingMeter(TrainerCallback):
    """CPU seconds and peak memory of this process while it trains (setup, such as writing the random base, excluded).

    CPU time is disturbed far less than wall time by other jobs on a shared machine.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak-RSS (VmHWM) count here
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = time.process_time()

    def on_train_end(self, args, state, control, **kwargs):
        self.cpu_seconds = time.process_time() - self.start
        self.peak_rss = peak_rss()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this process and measure it."""
    import resource

    import torch
    from transformers import AutoTokenizer, Qwen3Config

    from tuneforge.config import validate
    from tuneforge.data.prepare import prepare
    from tuneforge.objective import SFT
    from tuneforge.train.run import train

    job, work = Job(**spec["job"]), Path(spec["work"])
    if spec["base"]:
        cfg = validate(job_config(job, spec["overrides"], Path(spec["base"]), work, init="pretrained"))
    else:
        Qwen3Config(**job.model).save_pretrained(work / "model")
        cfg = validate(job_config(job, spec["overrides"], work / "model", work))
    meter = TrainingMeter()
    run = train(cfg, callbacks=[meter], log=lambda *_: None)
    summary = json.loads(run.summary.read_text())
    losses = [e["loss"] for e in map(json.loads, run.metrics.read_text().splitlines()) if "loss" in e]
    cuda = spec["device"] == "cuda"
    result = {
        "loss_tokens_per_s": summary["loss_tokens_per_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "padding_fraction": summary["padding_fraction"],
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else meter.peak_rss,
        "peak_memory_kind": "max allocated (GPU)" if cuda else "peak RSS while training",
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "final_loss": losses[-1],
        "mean_loss": summary["train_loss"],
        "steps": summary["steps"],
        "loss_tokens": summary["loss_tokens"],
        "tokens_seen": summary["tokens_seen"],
        "wall_time_s": summary["wall_time_s"],
        "cpu_time_s": meter.cpu_seconds,
        "loss_tokens_per_cpu_s": summary["loss_tokens"] / meter.cpu_seconds,
        "settings": {k: summary.get(k) for k in ("packing", "loss", "kernels", "compile")},
    }
    if cuda:
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
        lengths = [len(x) for x in prepare(cfg.data, tokenizer, log=lambda *_: None, objective=SFT).train["input_ids"]]
        peak = bf16_peak_flops()
        result["mfu"] = summary["tokens_per_s"] * model_flops_per_token(job.model, lengths) / peak
        result["bf16_peak_flops"] = peak
    return result


def run_configuration(job: Job, label: str, device: str, base: Path | None) -> dict[str, Any]:
    """Run one configuration of `job` in a fresh process (on the random base `base` if given); its result."""
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as work:
        spec = {"job": asdict(job), "overrides": CONFIGURATIONS[label], "work": work, "device": device}
        spec["base"] = str(base) if base else None
        return run_worker(__file__, spec, f"{job.name} / {label}")


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, with each configuration's ratio to its job's baseline."""
    lines = [
        "| job | configuration | loss tok/s | all tok/s | padding | peak memory | mean / final loss | "
        "loss tok/s ratio | loss tok/CPU-s ratio | memory ratio | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next(b for b in rows if b["job"] == r["job"] and b["configuration"] == "baseline")
        mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else "n/a"
        lines.append(
            f"| {r['job']} | {r['configuration']} | {r['loss_tokens_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['padding_fraction']:.1f} % | {r['peak_memory_bytes'] / 2**30:.2f} GiB | "
            f"{r['mean_loss']:.3f} / {r['final_loss']:.3f} | "
            f"{r['loss_tokens_per_s'] / base['loss_tokens_per_s']:.2f}× | "
            f"{r['loss_tokens_per_cpu_s'] / base['loss_tokens_per_cpu_s']:.2f}× | "
            f"{r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}× | {mfu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model-config", help="config.json of the model to run on the GPU (required with cuda)")
    parser.add_argument("--batch", type=int, help="samples per step (default: 4 on CPU, 8 on GPU)")
    parser.add_argument("--steps", type=int, help="optimizer steps of the throughput job (default: 16 CPU, 20 GPU)")
    parser.add_argument("--memory-steps", type=int, default=1, help="steps of the CPU memory job (default: 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest counts")
    parser.add_argument("--only", help="run only the jobs whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.json")
    parser.add_argument(
        "--base",
        type=Path,
        help="random weights already written for the jobs' shape (default: each run writes its own)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.device == "cuda" and not args.model_config:
        parser.error("--device cuda needs --model-config PATH (e.g. Qwen3-8B.config.json)")
    selected = [j for j in jobs(args) if not args.only or args.only in j.name]
    if args.base and len({json.dumps(j.model, sort_keys=True) for j in selected}) > 1:
        parser.error("--base serves one shape: pick its jobs with --only")

    rows = []
    for job in selected:
        for label in CONFIGURATIONS:
            # Repeats alternate with nothing else: on a shared machine the fastest run is the least disturbed.
            runs = [run_configuration(job, label, args.device, args.base) for _ in range(args.repeat)]
            best = max(runs, key=lambda r: r["loss_tokens_per_s"])
            rows.append(
                {
                    "job": job.name,
                    "configuration": label,
                    **best,
                    "runs_loss_tokens_per_s": [r["loss_tokens_per_s"] for r in runs],
                    "job_settings": {
                        "max_length": job.max_length,
                        "batch": job.batch,
                        "steps": job.steps,
                        "gradient_checkpointing": job.gradient_checkpointing,
                    },
                }
            )
            print(
                f"{job.name} / {label}: {best['loss_tokens_per_s']:,.0f} loss tok/s, "
                f"{best['peak_memory_bytes'] / 2**30:.2f} GiB",
                file=sys.stderr,
            )
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/train_throughput.py " + " ".join(sys.argv[1:])
    args.out.write_text(
        json.dumps(
            {"command": command.strip(), "environment": machine("transformers", "peft"), "results": rows}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
