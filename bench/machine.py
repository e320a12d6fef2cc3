"""What a benchmark ran on (the machine and the versions that matter), and the flags of the tiny-model benchmarks."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The real tokenizer, model configs and datasets: ../shared/assets beside the checkout, or $TUNEFORGE_ASSETS where
# they travel elsewhere (the GPU check carries a copy in .gpu/assets, scripts/gpu_bundle.sh). Same as tests/conftest.py.
ASSETS = Path(os.environ.get("TUNEFORGE_ASSETS", ROOT.parent / "shared" / "assets")).absolute()
# The test suite's tiny Qwen3 (tests/conftest.py) on the 0.6B config: real vocabulary, toy width and depth.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def machine(*packages: str) -> dict[str, str]:
    """CPU, cores, memory, device, load average, and the versions of python, torch and `packages`."""
    import psutil
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "memory_gb": str(round(psutil.virtual_memory().total / 2**30)),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "load_average_1m_before": str(round(os.getloadavg()[0], 2)),  # other work on the machine skews figures
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: importlib.import_module(name).__version__ for name in packages},
        # glibc allocator settings change CPU peak memory severalfold (docs/performance.md, Training throughput)
        **{key: value for key, value in os.environ.items() if key.startswith("MALLOC_")},
    }


def tiny_model_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark on the tests' tiny Qwen3 takes: --threads, --out (JSON results)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{name}.json")
    return parser


def tiny_model_setup(args: argparse.Namespace, *packages: str) -> dict[str, str]:
    """Apply --threads, put tests/ on the path (conftest.make_tiny_qwen3), and describe the machine."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    if args.threads:
        torch.set_num_threads(args.threads)
    return {**machine(*packages), "torch_threads": str(torch.get_num_threads())}


def command() -> str:
    """The command line that ran this benchmark, as docs/performance.md quotes it."""
    return " ".join([".venv/bin/python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def peak_rss() -> int:
    """This process's peak resident memory in bytes (`VmHWM`; reset it by writing 5 to /proc/self/clear_refs)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
