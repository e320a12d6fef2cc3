"""LoRA against QLoRA on the same job: peak memory and tokens/s, with QLoRA / LoRA ratios, in one invocation.

The job: a random-weight Qwen3 of the given config (written once, then loaded by tuneforge: 16-bit for LoRA,
quantized while loading for QLoRA nf4 + double quant), LoRA r16 on all linear layers, activation checkpointing,
AdamW, batches of random tokens at a fixed length. Each (method, batch) trains in its own process, so its memory is
its own: on a GPU the peak allocated while training plus the weights; on the CPU the peak RSS sampled while
training (the loader's transient 16-bit reads are left out, as they are freed before training).

    python bench/qlora_memory.py --layers 8                         # CPU: Qwen3-0.6B shape cut to 8 layers, fp32
    python bench/qlora_memory.py --config ../shared/assets/model-configs/Qwen3-8B.config.json --seq 2048 \\
        --batch 1 4 --steps 5                                       # one GPU, bf16

Prints a Markdown table and writes bench/results/qlora_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from machine import ASSETS, machine
from worker import run_worker

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ASSETS / "qwen3-tokenizer"
QWEN3_0_6B = ASSETS / "model-configs" / "Qwen3-0.6B.config.json"
METHODS = ("lora", "qlora")


def write_base(config: Path | dict, folder: Path, dtype: str = "auto", layers: int | None = None) -> Path:
    """Random weights for `config` (a config.json, or its contents; `layers` decoder layers if given) in `folder`,
    by tuneforge's random-init path; returns `folder`."""
    from transformers import AutoTokenizer

    from tuneforge.config import ModelConfig
    from tuneforge.model.load import save_random_base

    config = dict(json.loads(config.read_text()) if isinstance(config, Path) else config)
    config["num_hidden_layers"] = layers or config["num_hidden_layers"]
    source = folder.with_name(f"{folder.name}-config")  # one per base: several bases may share a parent
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    cfg = ModelConfig(name_or_path=str(source), init="random", dtype=dtype)
    save_random_base(cfg, folder, AutoTokenizer.from_pretrained(TOKENIZER), seed=0)
    return folder


def add_base_flag(parser: argparse.ArgumentParser) -> None:
    """--base: the random weights a bench would write, already written (bench/gpu_check.py shares one base)."""
    parser.add_argument(
        "--base", type=Path, help="random weights already written for this shape (default: write them here)"
    )


class RssPeak:
    """Peak resident memory of this process while running, sampled every 5 ms (CPU runs)."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tensor_bytes(model, optimizer) -> tuple[int, int]:
    """Bytes of the model's weights (4-bit layers with their quantization state) and of the optimizer state."""
    import bitsandbytes as bnb
    import torch

    from tuneforge.model.quant import quantized_bytes

    layers = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)  # counted by quantized_bytes, with their state
    skip = {id(m.weight) for m in model.modules() if isinstance(m, layers)}
    plain = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if id(t) not in skip)
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return plain + quantized_bytes(model).quantized, state


def training_peak(cuda: bool) -> Any:
    """A Trainer callback whose `.measured(baseline)` is the training peak: from train begin, minus the idle RSS on CPU
    (weights copied out of the checkpoint's memory map first, VmHWM restarted), or the CUDA allocator's peak."""
    import torch
    from machine import peak_rss
    from transformers import TrainerCallback

    class Peak(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                return
            own_memory(model)
            release_freed_heap()
            Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS (VmHWM) count here

        def on_train_end(self, args, state, control, **kwargs):
            self.peak = peak_rss()

        def measured(self, baseline: int) -> int:
            return torch.cuda.max_memory_allocated() if cuda else self.peak - baseline

    return Peak()


def own_memory(model) -> None:
    """Copy weights out of the checkpoint's memory map (CPU runs).

    transformers keeps tensors loaded without conversion as views of the mmapped safetensors file, and while one
    view lives, every page the loader touched (all of it, when QLoRA quantized it) stays in RSS. Copies make RSS
    count what training holds, for both methods alike.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


def release_freed_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it), so RSS shows what is live (CPU runs)."""
    import ctypes
    import gc

    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the base for one method, train `steps` steps after one warm-up step, measure."""
    import contextlib

    import torch

    from tuneforge.config import MethodConfig, ModelConfig
    from tuneforge.model.adapters import apply_method
    from tuneforge.model.load import load_model

    cuda = torch.cuda.is_available()
    method = MethodConfig(type=spec["method"], rank=16, alpha=32, dropout=0.0)
    model = load_model(ModelConfig(name_or_path=spec["model"], dtype=spec["dtype"]), method, log=lambda *_: None)
    model = apply_method(model, method, log=lambda *_: None)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (spec["batch"], spec["seq"]), generator=generator)
    batch = batch.to(model.device)
    if not cuda:
        own_memory(model)
    release_freed_heap()  # the loader's transient 16-bit reads are not training memory
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with RssPeak() if not cuda else contextlib.nullcontext() as rss:
        step()  # warm-up: optimizer state, kernels, allocator
        if cuda:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(spec["steps"]):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    weights, optimizer_state = tensor_bytes(model, optimizer)
    tokens = spec["batch"] * spec["seq"] * spec["steps"]
    return {
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,  # steadier than wall time on a shared CPU
        "weights_bytes": weights,
        "optimizer_state_bytes": optimizer_state,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else rss.peak,
        "peak_memory_kind": "max allocated (GPU)" if cuda else "peak RSS while training",
    }


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one (method, batch) in a fresh process; its result."""
    return run_worker(__file__, spec, f"{spec['method']} batch {spec['batch']}")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; each row carries its ratios to the LoRA row of the same batch."""
    gib = 2**30
    lines = [
        "| batch | method | tokens/s | tokens/CPU-s | weights | optimizer state | peak memory | "
        "tokens/s ratio | weights ratio | peak memory ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next(b for b in rows if b["batch"] == r["batch"] and b["method"] == "lora")
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['tokens_per_s']:,.1f} | {r['tokens_per_cpu_s']:,.1f} | "
            f"{r['weights_bytes'] / gib:.3f} GiB | {r['optimizer_state_bytes'] / gib:.3f} GiB | "
            f"{r['peak_memory_bytes'] / gib:.2f} GiB | {r['tokens_per_s'] / base['tokens_per_s']:.2f}× | "
            f"{r['weights_bytes'] / base['weights_bytes']:.2f}× | "
            f"{r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=QWEN3_0_6B, help="config.json of the model (random weights)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the config's)")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sample")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="samples per step, one row pair each")
    parser.add_argument("--steps", type=int, default=2, help="measured steps (after one warm-up step)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest counts")
    parser.add_argument("--dtype", default="auto", help="model.dtype (auto: bf16 on Ampere+ GPUs, fp32 on CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qlora_memory.json")
    add_base_flag(parser)
    parser.add_argument("--save-base", type=Path, help="only write the random base for --config to this folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.save_base:
        write_base(args.config, args.save_base, args.dtype, args.layers)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-qlora-bench-") as work:
        model = args.base or write_base(args.config, Path(work) / "base", args.dtype, args.layers)
        for batch in args.batch:
            for method in METHODS:
                spec = {
                    "model": str(model),
                    "dtype": args.dtype,
                    "method": method,
                    "batch": batch,
                    "seq": args.seq,
                    "steps": args.steps,
                }
                # On a shared machine the fastest of the repeats is the least disturbed; memory does not vary.
                runs = [run_one(spec) for _ in range(args.repeat)]
                best = max(runs, key=lambda r: r["tokens_per_s"])
                rows.append(
                    {"method": method, "batch": batch, **best, "runs_tokens_per_s": [r["tokens_per_s"] for r in runs]}
                )
                print(
                    f"batch {batch} / {method}: {rows[-1]['tokens_per_s']:,.1f} tokens/s, "
                    f"{rows[-1]['peak_memory_bytes'] / 2**30:.2f} GiB",
                    file=sys.stderr,
                )
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/qlora_memory.py " + " ".join(sys.argv[1:])
    job = {
        "config": args.config.name,
        "layers": args.layers,
        "seq": args.seq,
        "steps": args.steps,
        "dtype": args.dtype,
        "lora": {"rank": 16, "target_modules": "all-linear"},
        "qlora": "nf4, double quant",
        "activation_checkpointing": True,
    }
    environment = machine("transformers", "peft", "bitsandbytes")
    record = {"command": command.strip(), "environment": environment, "job": job, "results": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
