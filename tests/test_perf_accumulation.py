"""Loss normalisation through the real training path: accumulation, packing and the chunked loss change nothing."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR, needs_assets
from safetensors.torch import load_file

from tuneforge.config import validate
from tuneforge.train.run import train


def first_step(model_dir, out, batch: int, accumulation: int, packing: bool, loss: str) -> dict:
    """Train one optimizer step on identity.json; return its logged loss and grad norm, adapter and summary."""
    cfg = validate(
        {
            "model": {"name_or_path": str(model_dir), "init": "random"},
            "data": {
                "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "N", "author": "A"}}],
                "max_length": 256,
                "packing": packing,
                "cache_dir": str(out.parent / "cache"),
            },
            "method": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "train": {
                "max_steps": 1,
                "learning_rate": 1e-3,
                "per_device_batch_size": batch,
                "gradient_accumulation": accumulation,
                "loss": loss,
                "logging_steps": 1,
                "save_steps": 1000,
            },
            "output": {"dir": str(out)},
        }
    )
    run = train(cfg, log=lambda *_: None)
    logged = [json.loads(line) for line in run.metrics.read_text().splitlines()][0]
    return {
        "loss": logged["loss"],
        "grad_norm": logged["grad_norm"],
        "adapter": load_file(str(run.adapter / "adapter_model.safetensors")),
        "summary": json.loads(run.summary.read_text()),
    }


@needs_assets
def test_accumulated_packed_chunked_steps_match_one_padded_batch(tiny_qwen3_dir, tmp_path):
    padded = first_step(tiny_qwen3_dir, tmp_path / "padded", batch=4, accumulation=1, packing=False, loss="standard")
    accumulated = first_step(tiny_qwen3_dir, tmp_path / "accum", batch=1, accumulation=4, packing=True, loss="chunked")

    assert padded["summary"]["packing"] == "off" and accumulated["summary"]["packing"] == "rows"
    assert accumulated["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert accumulated["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-5)
    for key in ("loss_tokens", "tokens_seen"):  # nothing lost or cut by packing
        assert accumulated["summary"][key] == padded["summary"][key]
    assert padded["summary"]["padding_fraction"] > 0 == accumulated["summary"]["padding_fraction"]
    assert accumulated["adapter"].keys() == padded["adapter"].keys()
    for key, weight in padded["adapter"].items():
        torch.testing.assert_close(accumulated["adapter"][key], weight, rtol=1e-5, atol=1e-6)
