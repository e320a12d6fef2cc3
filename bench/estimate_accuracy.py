"""How close `tuneforge estimate` comes to measured training memory: each configuration trains in a fresh process.

For each model shape × method (lora, qlora, full) × activation checkpointing (on, off) × batch layout (packed,
padded): a random-weight base written once by tuneforge's random-init path, loaded by tuneforge (quantized while
loading for qlora), trained for a few steps through tuneforge's SFTTrainer, collator and TrainingArguments on
batches of random token ids at exactly data.max_length (every token labelled: the estimate's worst case). Measured:
on the CPU the peak RSS while training minus the process's idle baseline (after imports and data, before the
model); on a GPU torch.cuda.max_memory_allocated. Estimated: tuneforge.estimate for the same job ("tensors", what
torch allocates).

glibc keeps freed heap memory under RSS (docs/performance.md, Training throughput), so CPU workers run with
MALLOC_MMAP_THRESHOLD_=65536: RSS then follows the live tensors, which is what the estimate models.

    python bench/estimate_accuracy.py                          # CPU: tiny and Qwen3-0.6B shapes, fp32
    python bench/estimate_accuracy.py --shapes tiny            # CPU: tiny only
    python bench/estimate_accuracy.py --device cuda --shapes 8B --max-length 2048 --batch 2   # GPU: 8B, bf16

Prints a Markdown table and writes bench/results/estimate_accuracy.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from estimate_process import process_rows, process_table, serve_worker
from machine import ASSETS, TINY, machine
from qlora_memory import add_base_flag, release_freed_heap, training_peak, write_base
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ASSETS / "model-configs"
# A bitsandbytes nf4 checkpoint as transformers saves one (its config.json carries quantization_config), trained with
# method.type lora: the estimate reads the checkpoint's own quantization (issue 25).
NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
       "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32"}  # fmt: skip
# A tiny Qwen3-MoE (transformers' Qwen3MoeConfig): 8 experts of width 64, 2 per token, on the tiny shape.
MOE = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2,
       "moe_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip
SHAPES = {
    "tiny": ("Qwen3-0.6B", TINY),
    "tiny-nf4": ("Qwen3-0.6B", TINY | {"quantization_config": NF4}),
    "tiny-moe": ("Qwen3-0.6B", TINY | MOE),
    "0.6B": ("Qwen3-0.6B", {}),
    "8B": ("Qwen3-8B", {}),
}
LENGTHS = {"0.6B": 256, "8B": 2048}  # default tokens per sample; 512 for the tiny shapes
METHODS = ("lora", "qlora", "full")
# What identifies a measured row, so that --resume can skip it.
ROW_KEYS = ("shape", "method", "checkpointing", "packing", "max_length", "batch", "steps")


def add_shape_flags(parser: argparse.ArgumentParser, max_length: int | None = 512) -> None:
    """--shape (one of SHAPES) and --device, and --max-length unless None: the flags of the one-shape benches."""
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    if max_length is not None:
        parser.add_argument("--max-length", type=int, default=max_length)


def job_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """The tuneforge config of one measured configuration."""
    return {
        "model": {"name_or_path": spec["model"], "attn": "sdpa"},
        "data": {
            "datasets": [{"path": "(random tokens)"}],
            "max_length": spec["max_length"],
            "packing": spec["packing"],
            "group_by_length": False,
        },
        # LoRA keys only where they apply: config validation refuses them under method.type full.
        "method": {"type": spec["method"]}
        | ({} if spec["method"] == "full" else {"rank": 8, "alpha": 16, "dropout": 0.0}),
        "train": {
            "max_steps": spec["steps"],
            "per_device_batch_size": spec["batch"],
            "gradient_checkpointing": spec["checkpointing"],
            "save_steps": 10**6,
            "logging_steps": 1,
        },
        "output": {"dir": spec["out"]},
    }


def rss() -> int:
    """This process's resident memory in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration and measure its peak memory."""
    import datasets
    import torch

    from tuneforge.config import validate
    from tuneforge.data.collate import make_collator
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model
    from tuneforge.rundir import Run
    from tuneforge.train.run import training_arguments
    from tuneforge.train.trainer import SFTTrainer

    cfg = validate(job_raw(spec))
    cuda = torch.cuda.is_available()
    generator = torch.Generator().manual_seed(0)
    rows = spec["batch"] * spec["steps"]
    ids = torch.randint(0, 151_000, (rows, spec["max_length"]), generator=generator).tolist()
    dataset = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    release_freed_heap()
    baseline = rss()

    quiet = lambda *_: None  # noqa: E731
    model = apply_method(load_model(cfg.model, cfg.method, log=quiet), cfg.method, quiet)
    peak = training_peak(cuda)
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(cfg, Run(Path(spec["out"])), False),
        train_dataset=dataset,
        data_collator=make_collator(cfg.data, 151643, model, quiet),
        loss=cfg.train.loss,
        callbacks=[peak],
    )
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        # Recorded, not fatal: the remaining rows still run, and the estimate should exceed the device here.
        return {"measured_bytes": None, "out_of_memory": True, "device_bytes": torch.cuda.mem_get_info()[1]}
    measured = peak.measured(baseline)
    return {"measured_bytes": measured, "baseline_rss_bytes": baseline}


def shape_config(shape: str) -> dict[str, Any]:
    """The config.json of a measured shape: an official Qwen3 config, cut down for tiny."""
    name, overrides = SHAPES[shape]
    return json.loads((CONFIGS / f"{name}.config.json").read_text()) | overrides


def write_shape_base(shape: str, folder: Path) -> Path:
    """Random weights of `shape` in `folder`; a quantized shape: its 16-bit original, quantized and saved as such."""
    config = shape_config(shape)
    saved = config.pop("quantization_config", None)
    if saved is None:
        return write_base(config, folder)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    original = write_base(config, folder.with_name(f"{folder.name}-16bit"))
    quantization = BitsAndBytesConfig.from_dict(saved | {"bnb_4bit_compute_dtype": torch.float32})
    AutoModelForCausalLM.from_pretrained(original, quantization_config=quantization).save_pretrained(folder)
    AutoTokenizer.from_pretrained(original).save_pretrained(folder)
    return folder


def estimated(row: dict[str, Any], device: str) -> dict[str, float]:
    """tuneforge's estimate of a measured row's job, by component (its shape from config.json alone)."""
    from tuneforge.config import validate
    from tuneforge.estimate.memory import Job, Shape, estimate

    cfg = validate(job_raw(row))
    est = estimate(Job.from_config(cfg, Shape.from_config(shape_config(row["shape"])), device))
    return {**est.parts, "tensors": est.tensors}


def score(row: dict[str, Any], device: str) -> None:
    """Fill in a measured row's estimate and error."""
    row["estimate"] = estimated(row, device)
    row["error"] = row["estimate"]["tensors"] / row["measured_bytes"] - 1 if row["measured_bytes"] is not None else None


def rescore(path: Path, device: str) -> None:
    """Recompute the estimates of recorded results (after a change to the estimator); measurements stay as run."""
    record = json.loads(path.read_text())
    for row in record["results"]:
        score(row, device)
    record["rescored_with_estimator_of"] = "this checkout"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record["results"]))


def cells(r: dict[str, Any]) -> list[str]:
    """One row's shape, method, checkpointing, layout, measured, estimated and error, as text."""
    mib = 2**20
    if r["measured_bytes"] is None:
        measured, error = f"out of memory ({r['device_bytes'] / 2**30:,.0f} GiB device)", "n/a"
    else:
        measured, error = f"{r['measured_bytes'] / mib:,.0f} MiB", f"{r['error']:+.1%}"
    return [
        r["shape"],
        r["method"],
        "on" if r["checkpointing"] else "off",
        "packed" if r["packing"] else "padded",
        measured,
        f"{r['estimate']['tensors'] / mib:,.0f} MiB",
        error,
    ]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: measured vs estimated per configuration, and the error."""
    lines = [
        "| shape | method | checkpointing | layout | measured | estimated | error |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def load_record(path: Path, resume: bool) -> dict[str, Any]:
    """The results so far: those in `path` when resuming (older files' single command becomes the first run)."""
    if not (resume and path.exists()):
        return {"runs": [], "results": []}
    record = json.loads(path.read_text())
    if "runs" not in record:
        record = {"runs": [{"command": record["command"], "environment": record["environment"]}], **record}
        del record["command"], record["environment"]
        for row in record["results"]:
            row["run"] = 0
    return record


def measure_processes(out: Path) -> None:
    """The whole-process rows (train under /usr/bin/time, the serving engine), glibc untuned, written to `out`."""
    from tuneforge.io import atomic_write_json

    environment = machine("transformers", "peft", "bitsandbytes")
    with tempfile.TemporaryDirectory(prefix="tf-estimate-process-") as work:
        tiny = write_base(shape_config("tiny"), Path(work) / "tiny")
        serve_shape = shape_config("0.6B") | {"num_hidden_layers": 4}
        serve_base = write_base(serve_shape, Path(work) / "serve")
        rows = process_rows(Path(work), tiny, serve_base, serve_shape, __file__)
    command = ("python bench/estimate_accuracy.py " + " ".join(sys.argv[1:])).strip()
    atomic_write_json(out, {"command": command, "environment": environment, "results": rows})
    print(process_table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "0.6B"], choices=sorted(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--layouts", nargs="+", default=["packed", "padded"], choices=["packed", "padded"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--max-length", type=int, help="tokens per sample (tiny shapes 512, 0.6B 256, 8B 2048)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "estimate_accuracy.json")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out, measure the others")
    parser.add_argument("--rescore", type=Path, help="recompute the estimates of a results JSON (measurements kept)")
    add_base_flag(parser)
    parser.add_argument("--process", action="store_true", help="whole-process rows instead (estimate_process.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(serve_worker(spec["serve"]) if "serve" in spec else worker(spec)))
        return
    if args.rescore:
        rescore(args.rescore, args.device)
        return
    if args.base and len(args.shapes) > 1:
        parser.error("--base serves one shape: give one --shapes")
    if args.device == "cpu":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the workers; see the docstring
    from tuneforge.io import atomic_write_json

    if args.process:
        measure_processes(args.out)
        return
    record = load_record(args.out, args.resume)
    rows = record["results"]
    done = {tuple(r[k] for k in ROW_KEYS) for r in rows}
    # Each run keeps its command and machine state (load differs between sessions); each row names its run.
    record["runs"].append(
        {
            "command": ("python bench/estimate_accuracy.py " + " ".join(sys.argv[1:])).strip(),
            "environment": machine("transformers", "peft", "bitsandbytes"),
        }
    )
    with tempfile.TemporaryDirectory(prefix="tf-estimate-bench-") as work:
        for shape in args.shapes:
            length = args.max_length or LENGTHS.get(shape, 512)
            specs = [
                {
                    "shape": shape,
                    "method": method,
                    "checkpointing": checkpointing,
                    "packing": packing,
                    "max_length": length,
                    "batch": args.batch,
                    "steps": args.steps,
                }
                for method, checkpointing, packing in itertools.product(
                    args.methods, [c == "on" for c in args.checkpointing], [x == "packed" for x in args.layouts]
                )
            ]
            specs = [s for s in specs if tuple(s[k] for k in ROW_KEYS) not in done]
            if not specs:
                continue
            base = args.base or write_shape_base(shape, Path(work) / shape)
            for spec in specs:
                spec |= {"model": str(base), "out": str(Path(work) / "run")}
                row = {**spec, **run_worker(__file__, spec, f"{shape} {spec['method']}")}
                row["run"] = len(record["runs"]) - 1
                score(row, args.device)
                rows.append(row)
                atomic_write_json(args.out, record)  # a finished row survives a later failure or kill
                print(" ".join(cells(row)), file=sys.stderr, flush=True)
    print(table(rows))
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
