"""Time and peak memory of `tuneforge export gguf` for a Qwen3-0.6B-shaped model (random bf16 weights).

Every step runs in a fresh Python process that reports its own peak RSS (ru_maxrss), so figures never mix.
Baselines from the same invocation: copying the safetensors file (pure disk I/O) for time, and reading the
whole file into memory (the least any converter that loads the model needs) for memory. Not part of the tests.

    .venv/bin/python bench/export_gguf.py --types f16 q8_0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import ASSETS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ASSETS / "model-configs" / "Qwen3-0.6B.config.json"
RESULTS = ROOT / "bench" / "results" / "export_gguf.json"

# Runs in the child process: one step, then its wall and CPU seconds and peak RSS as JSON on the last line.
# CPU seconds hardly move when other processes share the machine; wall seconds do. Peak RSS is VmHWM, which
# starts afresh at exec (ru_maxrss would carry over the parent's peak from before the fork).
CHILD = """
import re, shutil, sys, time
start, cpu_start = time.perf_counter(), time.process_time()
from pathlib import Path
from tuneforge.export.gguf import export_gguf
imported, cpu_imported = time.perf_counter(), time.process_time()
step, model, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if step == "copy":
    shutil.copyfile(model / "model.safetensors", out)
elif step == "read":
    data = (model / "model.safetensors").read_bytes()
elif step != "import":
    export_gguf(model, out, step)
seconds = imported - start if step == "import" else time.perf_counter() - imported
cpu = cpu_imported - cpu_start if step == "import" else time.process_time() - cpu_imported
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(f'{{"seconds": {seconds}, "cpu_seconds": {cpu}, "peak_rss": {peak_kib * 1024}}}')
"""


def make_model(folder: Path) -> int:
    """Save a Qwen3-0.6B-shaped model with random bf16 weights and the real tokenizer; returns its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(CONFIG)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    generator = torch.Generator().manual_seed(0)
    tensors = {n: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(CONFIG, folder / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / "qwen3-tokenizer" / name, folder / name)
    return (folder / "model.safetensors").stat().st_size


def run_step(step: str, model: Path, out: Path) -> dict[str, float]:
    """One step in a fresh interpreter; its seconds and peak RSS in bytes."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, step, str(model), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    found = {"python": platform.python_version(), "tuneforge commit": commit.stdout.strip()}
    for package in ("gguf", "numpy", "torch", "transformers", "llama_cpp_python"):
        with contextlib.suppress(PackageNotFoundError):  # optional packages are just not reported
            found[package] = version(package)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0"], help="GGUF types to export")
    parser.add_argument("--workdir", type=Path, default=None, help="where the model and GGUFs go (default: temp)")
    args = parser.parse_args()

    import psutil

    load_start = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    model = workdir / "qwen3-0.6b-random"
    size = make_model(model)
    steps = {
        "import only (interpreter floor)": "import",
        "copy safetensors (I/O baseline)": "copy",
        "read whole model (load baseline)": "read",
        **{f"export gguf --type {t}": t for t in args.types},
    }
    rows = []
    for label, step in steps.items():
        out = workdir / f"out-{step}.bin"
        measured = run_step(step, model, out)
        rows.append({"step": label, **measured, "output_bytes": out.stat().st_size if out.exists() else None})
    copy_seconds = next(r["seconds"] for r in rows if r["step"].startswith("copy"))

    print(f"model: Qwen3-0.6B shape, random bf16 weights, {size / 2**20:.0f} MiB safetensors")
    print(f"{'step':36} {'seconds':>8} {'x copy':>7} {'CPU s':>7} {'peak RSS MiB':>13} {'RSS / model':>12}")
    for row in rows:
        row["time_vs_copy"] = row["seconds"] / copy_seconds
        row["rss_vs_model"] = row["peak_rss"] / size
        print(
            f"{row['step']:36} {row['seconds']:8.2f} {row['time_vs_copy']:7.1f} {row['cpu_seconds']:7.2f} "
            f"{row['peak_rss'] / 2**20:13.0f} {row['rss_vs_model']:12.2f}"
        )
    machine = {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at start and end
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {"model_bytes": size, "machine": machine, "versions": versions(), "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
