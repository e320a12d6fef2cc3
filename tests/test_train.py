"""Training end to end on a tiny random Qwen3 with the real tokenizer: it learns, it resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DATA_DIR, needs_assets
from safetensors.torch import load_file

from tuneforge.config import save_config, validate
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.chat import open_session
from tuneforge.rundir import Run
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
    if raw["method"]["type"] == "full":  # LoRA keys under type: full are a config error
        raw["method"] = {key: value for key, value in raw["method"].items() if key not in ("rank", "alpha", "dropout")}
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


def step_losses(run) -> dict[int, float]:
    entries = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


# Dropout and a cosine schedule: a resume must restore RNG, optimizer and scheduler state to match.
RESUME_SETTINGS = dict(
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


def resume_config(model_dir, out, **train_settings):
    settings = {**RESUME_SETTINGS, "train": {**RESUME_SETTINGS["train"], **train_settings}}
    return identity_config(model_dir, out, **settings)


@pytest.fixture(scope="module")
def straight(tiny_qwen3_dir, tmp_path_factory):
    """The uninterrupted run the interrupted ones must match."""
    return train(resume_config(tiny_qwen3_dir, tmp_path_factory.mktemp("straight") / "run"), **quiet)


def assert_same_training(got, expected) -> None:
    """Same loss at every step, same adapter weights, and a summary over the whole run, as if never interrupted."""
    want, have = step_losses(expected), step_losses(got)
    assert sorted(have) == sorted(want) == [1, 2, 3, 4, 5, 6]
    for step in want:
        assert have[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6)
    a = load_file(str(expected.adapter / "adapter_model.safetensors"))
    b = load_file(str(got.adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    want, have = json.loads(expected.summary.read_text()), json.loads(got.summary.read_text())
    for key in ("steps", "tokens_seen", "loss_tokens", "padding_fraction"):
        assert have[key] == want[key], key
    assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    assert want["train_loss"] == pytest.approx(sum(step_losses(expected).values()) / 6, rel=1e-5)


# Runs `tuneforge train CONFIG` with the save of checkpoint-6 stalled after its optimizer and scheduler are
# written (before RNG states and trainer_state.json), so that the test kills it mid-checkpoint every time.
STALLED_SAVE = """
import sys, time
from transformers import Trainer
from tuneforge.cli import app

save_rng_state = Trainer._save_rng_state

def stalled(self, output_dir):
    if self.state.global_step == 6:
        time.sleep(600)
    save_rng_state(self, output_dir)

Trainer._save_rng_state = stalled
app(["train", sys.argv[1]])
"""


def wait_for(path, process, log, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@needs_assets
def test_sigkill_while_a_checkpoint_is_written_then_resume_auto_matches(tiny_qwen3_dir, tmp_path, straight):
    run = Run(tmp_path / "killed")
    config = tmp_path / "killed.yaml"
    save_config(resume_config(tiny_qwen3_dir, run.root), config)
    log = tmp_path / "train.log"
    with log.open("w") as out:  # a file, not a pipe that could fill up and stall the run
        process = subprocess.Popen([sys.executable, "-c", STALLED_SAVE, str(config)], stdout=out, stderr=out)
    staging = run.checkpoints / ".checkpoint-6.staging.tmp"
    try:
        wait_for(staging / "checkpoint-6" / "scheduler.pt", process, log)
    finally:
        process.kill()  # SIGKILL: no handler runs
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # Steps 4-6 are lost, as in any crash; the half-written checkpoint never carried its final name.
    assert not (staging / "checkpoint-6" / "trainer_state.json").exists()
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    with run.metrics.open("a") as f:  # a kill while a log line is appended tears it
        f.write('{"step": 7, "lo')
    stale = run.root / ".adapter.k1ll3d.tmp"
    stale.mkdir()

    resumed = train(resume_config(tiny_qwen3_dir, run.root, resume="auto"), **quiet)
    assert json.loads(resumed.summary.read_text())["resumed_from"] == str(run.checkpoints / "checkpoint-3")
    assert not staging.exists() and not stale.exists()
    assert_same_training(resumed, straight)


@needs_assets
def test_sigint_saves_prints_the_resume_command_and_the_resume_matches(tiny_qwen3_dir, tmp_path, straight, monkeypatch):
    from tuneforge.train.launch import train_command
    from tuneforge.train.trainer import SFTTrainer

    run = Run(tmp_path / "stopped")
    config = tmp_path / "stopped.yaml"
    save_config(resume_config(tiny_qwen3_dir, run.root, logging_steps=5), config)
    overrides = ["train.logging_steps=1"]
    training_step = SFTTrainer.training_step
    # Whatever handled Ctrl-C before (SIG_IGN in a shell's background job, Python's handler otherwise).
    handler = signal.getsignal(signal.SIGINT)

    def ctrl_c_in_step_4(self, *args, **kwargs):
        if self.state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does: delivered mid-step
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", ctrl_c_in_step_4)
    lines = []
    status = train_command(config, overrides, log=lambda *parts, **_: lines.append(" ".join(map(str, parts))))
    assert status == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C acts as before again
    assert lines[-3:] == [
        "SIGINT: saving a checkpoint at step 4, then stopping",
        f"stopped by SIGINT at step 4; checkpoint saved in {run.checkpoints / 'checkpoint-4'}",
        f"resume with: tuneforge train {config} train.logging_steps=1 train.resume=auto",
    ]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert not run.summary.exists() and not run.adapter.exists()
    first_session = json.loads((run.checkpoints / "checkpoint-4" / "run_totals.json").read_text())

    monkeypatch.setattr(SFTTrainer, "training_step", training_step)
    assert train_command(config, [*overrides, "train.resume=auto"], log=quiet["log"]) == 0
    assert_same_training(run, straight)
    summary = json.loads(run.summary.read_text())
    assert summary["resumed_from"] == str(run.checkpoints / "checkpoint-4")
    assert summary["wall_time_s"] > first_session["wall_time_s"] > 0


@needs_assets
def test_resume_auto_on_a_finished_run_refuses_and_keeps_its_summary(tiny_qwen3_dir, tmp_path, straight):
    from tuneforge.errors import UserError

    finished = tmp_path / "finished"
    shutil.copytree(straight.root, finished)
    before = (finished / "summary.json").read_bytes()
    with pytest.raises(UserError) as refused:
        train(resume_config(tiny_qwen3_dir, finished, resume="auto"), **quiet)
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"train.resume: {finished} is a finished run (6 steps; see its summary.json); to train longer, raise "
        "train.max_steps above 6 and keep train.resume=auto, or start over with output.overwrite=true"
    )
    assert (finished / "summary.json").read_bytes() == before

    longer = train(resume_config(tiny_qwen3_dir, finished, resume="auto", max_steps=7), **quiet)
    summary = json.loads(longer.summary.read_text())
    assert summary["steps"] == 7 and summary["resumed_from"] == str(finished / "checkpoints" / "checkpoint-6")
    assert summary["tokens_seen"] > json.loads(before)["tokens_seen"]


@needs_assets
def test_refuses_to_overwrite_a_finished_run(tiny_qwen3_dir, tmp_path):
    cfg = identity_config(tiny_qwen3_dir, tmp_path / "run", train={"max_steps": 1})
    train(cfg, **quiet)
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="already holds a finished run; set train.resume=auto"):
        train(cfg, **quiet)
