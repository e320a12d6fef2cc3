"""GRPO end to end on a tiny random Qwen3 with the real tokenizer: the run folder, resume, and a reward that rises."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_qwen3, needs_assets
from safetensors.torch import load_file

from tuneforge.config import validate
from tuneforge.train.run import train

quiet = {"log": lambda *_: None}
EOS = 151645  # <|im_end|>


@pytest.fixture(scope="module")
def ending_model(tmp_path_factory):
    """A tiny random Qwen3 whose <|im_end|> embedding (tied to its output row) is 4× as long as the others: it ends
    about a third of its 16-token answers early, so a length reward has something to rank from the first step."""
    from transformers import AutoModelForCausalLM

    folder = make_tiny_qwen3(tmp_path_factory.mktemp("ending-qwen3"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.model.embed_tokens.weight[EOS] *= 4
    model.save_pretrained(folder)
    return folder


def grpo_config(model_dir, out, grpo: dict, **train):
    data = out.parent / "questions.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"datasets": [{"path": str(data)}], "thinking": "off", "cache_dir": str(out.parent / "cache")},
            "method": {"type": "lora", "dropout": 0.0, "objective": "grpo", "grpo": grpo},
            "train": {
                "per_device_batch_size": 8,
                "learning_rate": 1e-2,
                "lr_scheduler": "constant",
                "logging_steps": 1,
                "save_steps": 1000,
                **train,
            },
            "output": {"dir": str(out)},
        }
    )


def logged(run, key: str) -> list[float]:
    return [e[key] for e in map(json.loads, run.metrics.read_text().splitlines()) if key in e]


@needs_assets
@pytest.mark.slow  # about 45 s of CPU: the fast suite stays under 15 min on 2 cores
def test_run_folder_metrics_completions_and_resume(ending_model, tmp_path):
    grpo = {
        "num_generations": 4,
        "max_completion_length": 8,
        "beta": 0.04,  # a reference: TRL's frozen "ref" adapter, which the result must not carry
        "rewards": [{"name": "accuracy"}, {"name": "length", "weight": 0.5}],
        "completions_every": 1,
    }
    cfg = grpo_config(ending_model, tmp_path / "run", grpo, max_steps=2, save_steps=1)
    run = train(cfg, **quiet)
    entry = json.loads(run.metrics.read_text().splitlines()[0])
    for key in ("rewards/accuracy/mean", "rewards/accuracy/std", "rewards/length/mean", "rewards/length/std", "kl"):
        assert key in entry
    assert {"completions/mean_length", "completions/clipped_ratio", "reward", "reward_std"} <= entry.keys()
    assert 1 <= entry["completions/mean_length"] <= 8 and entry["rewards/length/mean"] <= 0
    rows = [json.loads(line) for line in (run.root / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8  # each step's generation batch: 2 prompts × 4
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert rows[0]["rewards"].keys() == {"accuracy", "length"} and "advantage" in rows[0]
    assert not (run.adapter / "ref").exists() and (run.adapter / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["README.md", "checkpoint-1", "checkpoint-2"]
    summary = json.loads(run.summary.read_text())
    assert summary["objective"] == "grpo" and summary["steps"] == 2 and summary["loss_tokens"] > 0
    trained = load_file(run.adapter / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and w.abs().sum() > 0 for name, w in trained.items())

    # Resuming from checkpoint-1 redoes step 2: its completions are logged once, the old ones dropped.
    resumed = cfg.model_copy(deep=True)
    resumed.train.resume = str(run.checkpoints / "checkpoint-1")
    resumed.train.max_steps = 3
    resumed.output.overwrite = True
    train(resumed, **quiet)
    steps = [json.loads(line)["step"] for line in (run.root / "completions.jsonl").read_text().splitlines()]
    assert steps == [1] * 8 + [2] * 8 + [3] * 8


@needs_assets
@pytest.mark.slow  # 15 GRPO steps: 11 min wall on 2 cores at load average 17 (each process had a sixth of a core)
def test_a_learnable_reward_rises_and_is_reproducible(ending_model, tmp_path):
    grpo = {"num_generations": 4, "max_completion_length": 8, "rewards": [{"name": "length", "cache": 8}]}
    run = train(grpo_config(ending_model, tmp_path / "long", grpo, max_steps=12), **quiet)
    rewards = logged(run, "rewards/length/mean")
    assert len(rewards) == 12
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < -0.8 and last > first + 0.5, rewards  # shorter answers: the soft penalty shrinks
    # The same seed samples the same completions: a shorter run repeats the first steps exactly.
    again = train(grpo_config(ending_model, tmp_path / "again", grpo, max_steps=3), **quiet)
    assert logged(again, "rewards/length/mean") == rewards[:3]
    assert logged(again, "completions/mean_length") == logged(run, "completions/mean_length")[:3]


@needs_assets
@pytest.mark.slow  # two runs, one of them two processes: 8.5 min wall on 2 cores at load average 17
def test_two_processes_score_like_one(ending_model, tmp_path):
    """DDP (2 processes × 4 completions) against 1 process × 8: the same prompts reach the same groups and every
    process's rewards are gathered. Sampling draws differ with the batch split, so this compares near-greedy sampling
    (temperature 0.01): the same completions, hence the same rewards and lengths at every step."""
    import subprocess
    import sys

    import yaml

    grpo = {"num_generations": 4, "max_completion_length": 8, "temperature": 0.01, "rewards": [{"name": "length"}]}
    one = train(grpo_config(ending_model, tmp_path / "one", grpo, max_steps=2), **quiet)
    two = grpo_config(ending_model, tmp_path / "two", grpo, max_steps=2, per_device_batch_size=4)
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(two.model_dump(mode="json")))
    tuneforge = [sys.executable, "-c", "from tuneforge.cli import app; app()"]
    result = subprocess.run(
        [*tuneforge, "train", str(config), "--nproc", "2"], capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("rewards/length/mean", "completions/mean_length", "num_tokens"):
        assert logged(one, key) == logged(type(one)(tmp_path / "two"), key), key
    assert len(logged(one, "rewards/length/mean")) == 2
