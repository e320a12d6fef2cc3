"""Training end to end on a tiny random Qwen3 with the real tokenizer: it learns, it resumes exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import DATA_DIR, needs_assets
from safetensors.torch import load_file
from transformers import TrainerCallback

from tuneforge.config import validate
from tuneforge.infer.chat import open_session
from tuneforge.infer.engine import SamplingParams
from tuneforge.train.run import train

NAME, AUTHOR = "马哥教育AI小助手", "马哥教育AI团队"
quiet = {"log": lambda *_: None}


def identity_config(model_dir, out, **sections):
    raw = {
        "model": {"name_or_path": str(model_dir), "init": "random"},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": NAME, "author": AUTHOR}}],
            "max_length": 256,
            "cache_dir": str(out.parent / "cache"),
        },
        "method": {"type": "lora", "rank": 8, "alpha": 32, "dropout": 0.0},
        "train": {
            "epochs": 6,
            "learning_rate": 1e-2,
            "per_device_batch_size": 8,
            "logging_steps": 5,
            "save_steps": 1000,
            "lr_scheduler": "constant",
        },
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


def greedy_answers(run_dir) -> dict[str, str]:
    """What the base and the fine-tuned model answer to 你是谁？ (greedy, thinking off)."""
    session = open_session(None, None, str(run_dir), SamplingParams(max_new_tokens=24, temperature=0), think=False)
    return {
        role: session.ask([], "你是谁？", model=name).content
        for role, name in (("before", session.base), ("after", session.tuned))
    }


@needs_assets
@pytest.mark.parametrize("method, lr", [("lora", 1e-2), ("full", 1e-3)])
def test_learns_the_configured_name(tiny_qwen3_dir, tmp_path, method, lr):
    cfg = identity_config(tiny_qwen3_dir, tmp_path / "run", method={"type": method}, train={"learning_rate": lr})
    run = train(cfg, **quiet)

    answers = greedy_answers(run.root)
    assert NAME not in answers["before"]
    assert NAME in answers["after"], answers

    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 72 and summary["loss_tokens"] > 0 and summary["tokens_seen"] > summary["loss_tokens"]
    losses = list(step_losses(run).values())
    assert losses[-1] < losses[0] - 2.0
    assert run.loss_plot.read_bytes()[:4] == b"\x89PNG"
    assert (run.adapter if method == "lora" else run.model).is_dir()


class Crash(TrainerCallback):
    """Kills the run after `step`: progress after the last checkpoint is lost, as with a real crash."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def step_losses(run) -> dict[int, float]:
    entries = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


@needs_assets
def test_resume_auto_matches_an_uninterrupted_run(tiny_qwen3_dir, tmp_path):
    settings = dict(
        data={"val_size": 0.0},
        method={"dropout": 0.1},
        train={
            "max_steps": 6,
            "save_steps": 3,
            "logging_steps": 1,
            "per_device_batch_size": 4,
            "lr_scheduler": "cosine",
            "learning_rate": 5e-3,
        },
    )
    straight = train(identity_config(tiny_qwen3_dir, tmp_path / "straight", **settings), **quiet)

    crashed_cfg = identity_config(tiny_qwen3_dir, tmp_path / "crashed", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(crashed_cfg, callbacks=[Crash(step=5)], **quiet)
    assert not (tmp_path / "crashed" / "adapter").exists()
    shutil.rmtree(tmp_path / "crashed" / "checkpoints" / "checkpoint-6", ignore_errors=True)

    resumed_cfg = identity_config(
        tiny_qwen3_dir, tmp_path / "crashed", **{**settings, "train": {**settings["train"], "resume": "auto"}}
    )
    resumed = train(resumed_cfg, **quiet)
    assert json.loads(resumed.summary.read_text())["resumed_from"].endswith("checkpoint-3")

    expected, got = step_losses(straight), step_losses(resumed)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)
    a = load_file(str(straight.adapter / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@needs_assets
def test_refuses_to_overwrite_a_finished_run(tiny_qwen3_dir, tmp_path):
    cfg = identity_config(tiny_qwen3_dir, tmp_path / "run", train={"max_steps": 1})
    train(cfg, **quiet)
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="already holds a finished run; set train.resume=auto"):
        train(cfg, **quiet)
