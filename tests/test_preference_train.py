"""Preference training end to end on a tiny random Qwen3 with the real tokenizer: DPO moves its rewards."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, needs_assets

from tuneforge.config import validate
from tuneforge.train.run import train

quiet = {"log": lambda *_: None}


def dpo_config(model_dir, out, **method):
    return validate(
        {
            "model": {"name_or_path": str(model_dir), "init": "random"},
            "data": {
                # The 57 pairs of up to 192 tokens (the longer ones are dropped), 15 % of all held out.
                "datasets": [{"path": str(DATA_DIR / "dpo_zh_demo.json")}],
                "max_length": 192,
                "val_size": 0.15,
                "cache_dir": str(out.parent / "cache"),
            },
            "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "objective": "dpo", **method},
            "train": {
                "max_steps": 8,
                "learning_rate": 1e-2,
                "per_device_batch_size": 4,
                "logging_steps": 2,
                "eval_steps": 8,
                "save_steps": 1000,
                "lr_scheduler": "constant",
            },
            "output": {"dir": str(out)},
        }
    )


def logged(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


@pytest.mark.slow  # about 30-70 s on 2 cores: run in the suite's second step (scripts/test.sh)
@needs_assets
def test_dpo_rewards_rise_and_held_out_chosen_gains_on_rejected(tiny_qwen3_dir, tmp_path):
    run = train(dpo_config(tiny_qwen3_dir, tmp_path / "run"), **quiet)
    entries = logged(run)
    steps = [e for e in entries if "rewards/margins" in e]
    assert [e["step"] for e in steps] == [2, 4, 6, 8]
    first, last = steps[0], steps[-1]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.2
    assert last["rewards/accuracies"] > first["rewards/accuracies"]
    assert last["loss"] < first["loss"]
    # Held-out pairs: the chosen answers' log-prob rose relative to the rejected ones (against the reference, which
    # is the untrained model: the adapter disabled).
    [held_out] = [e for e in entries if "eval_rewards/margins" in e]
    assert held_out["eval_rewards/margins"] > 0
    summary = json.loads(run.summary.read_text())
    assert summary["objective"] == "dpo" and summary["steps"] == 8
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert (run.root / "rewards.png").is_file() and run.loss_plot.is_file()
