"""The CLI as a user runs it: demo, data render / preview, train with a tracker, chat."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from conftest import DATA_DIR, needs_assets

from tuneforge.data.render import IGNORE


def tuneforge(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


def test_demo_teaches_the_name_offline(tmp_path):
    result = tuneforge("demo", "--name", "TinyForge", "--author", "ACME Lab", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if "你是谁" in line or "Who are you" in line]
    assert len(rows) == 2
    for row in rows:
        before, after = row.split("│")[2:4]
        assert "TinyForge" in after and "TinyForge" not in before
    assert (tmp_path / "demo" / "run" / "adapter" / "adapter_model.safetensors").is_file()


def _config(tmp_path, model_dir, **train) -> str:
    cfg = {
        "model": {"name_or_path": str(model_dir), "init": "random"},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "N", "author": "A"}}],
            "max_length": 128,
            "val_size": 4,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"max_steps": 2, "per_device_batch_size": 2, "logging_steps": 1, **train},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


@needs_assets
def test_data_render_writes_ids_and_labels(tmp_path, tiny_qwen3_dir, qwen3_tokenizer):
    out = tmp_path / "rendered.jsonl"
    result = tuneforge("data", "render", _config(tmp_path, tiny_qwen3_dir), "--out", str(out), "--limit", "5")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"])
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
        assert qwen3_tokenizer.decode(trained).endswith("<|im_end|>")
        prompt = qwen3_tokenizer.decode(row["input_ids"][: row["labels"].index(trained[0])])
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
    assert "train 87, validation 4" in result.stderr


@needs_assets
def test_data_preview_shows_lengths(tmp_path, tiny_qwen3_dir):
    result = tuneforge("data", "preview", _config(tmp_path, tiny_qwen3_dir), "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "sample 0:" in result.stderr and "token lengths" in result.stderr and "samples 87" in result.stderr


@needs_assets
def test_train_with_tensorboard_then_chat(tmp_path, tiny_qwen3_dir):
    result = tuneforge("train", _config(tmp_path, tiny_qwen3_dir, report_to="tensorboard"), "train.save_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["save_steps"] == 1 and config["model"]["init"] == "random"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["tokens_per_s"] > 0

    chat = tuneforge(
        "chat", "--run", str(run), "--prompt", "你是谁？", "--greedy", "--max-new-tokens", "4", "--no-think"
    )
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "answer:" in chat.stdout
