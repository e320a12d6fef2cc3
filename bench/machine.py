"""What a benchmark ran on: the machine and the versions that matter, for its JSON results."""

from __future__ import annotations

import importlib
import os
import platform


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
