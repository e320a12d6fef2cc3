"""Quiet by default: commands print no third-party noise; --verbose shows it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import yaml
from conftest import DATA_DIR, needs_assets

from tuneforge.quiet import VERBOSE_ENV, configure

# What the libraries printed during `data render` and a short `train` before (DeepSpeed 0.19, bitsandbytes 0.50,
# transformers 5.24, peft 0.21, datasets 5.2), and anything shaped like a Python warning or traceback.
NOISE = (
    "Setting accelerator to CPU",  # DeepSpeed on machines without a GPU, on stdout
    "Failed to load CPU gemm_4bit_forward",  # bitsandbytes on AVX-512 BF16 CPUs without the `kernels` package
    "is deprecated and will be removed",  # transformers FutureWarnings (gradient_checkpointing, via peft)
    "Warning:",
    "warnings.warn",
    "Loading weights",  # transformers' per-tensor bars
    "Writing model shards",
    "Saving the dataset",  # datasets' bookkeeping bars
    "Filter:",
    "Traceback",
)


def tuneforge(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != VERBOSE_ENV} | {"COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _config(tmp_path, model_dir) -> str:
    cfg = {
        "model": {"name_or_path": str(model_dir), "init": "random"},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "N", "author": "A"}}],
            "max_length": 128,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"max_steps": 1, "per_device_batch_size": 2, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


def _noise(result: subprocess.CompletedProcess) -> list[str]:
    return [n for n in NOISE if n in result.stdout or n in result.stderr]


@needs_assets
def test_render_and_train_print_no_library_noise(tmp_path, tiny_qwen3_dir):
    config = _config(tmp_path, tiny_qwen3_dir)
    render = tuneforge("data", "render", config, "--out", str(tmp_path / "r.jsonl"))
    assert render.returncode == 0, render.stderr
    assert render.stdout == f"wrote 91 samples to {tmp_path / 'r.jsonl'}\n"
    assert _noise(render) == [], render.stderr
    train = tuneforge("train", config)
    assert train.returncode == 0, train.stderr
    assert train.stdout == "" and _noise(train) == [], train.stdout + train.stderr
    assert "done: " in train.stderr


@needs_assets
def test_verbose_shows_library_output(tmp_path, tiny_qwen3_dir):
    result = tuneforge("--verbose", "data", "render", _config(tmp_path, tiny_qwen3_dir), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "Saving the dataset" in result.stderr and "Filter" in result.stderr


def test_library_log_records_and_warnings_are_dropped_unless_verbose(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("DeepSpeed")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            configure()
            logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to ...")
            logger.warning("a DeepSpeed problem worth seeing")
            warnings.warn(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
            )
            warnings.warn("a deprecation tuneforge must fix", FutureWarning, stacklevel=1)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a DeepSpeed problem worth seeing"]
    assert [str(w.message) for w in caught] == ["a deprecation tuneforge must fix"]
