"""User mistakes give one line naming the file and line, or the key, exit non-zero, and print no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TOKENIZER_DIR, needs_assets


def tuneforge(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_config(tmp_path, data_path, **data_extra) -> str:
    cfg = {
        "model": {"name_or_path": str(TOKENIZER_DIR), "init": "random"},
        "data": {"datasets": [{"path": str(data_path), **data_extra.pop("dataset", {})}], **data_extra},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_unknown_config_key_names_key_and_suggestion(tmp_path):
    path = write_config(tmp_path, tmp_path / "d.json")
    raw = yaml.safe_load(Path(path).read_text())
    raw["train"] = {"learning_rat": 1e-4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    line = one_line_error(tuneforge("config", "check", path))
    assert "unknown key 'train.learning_rat'" in line and "did you mean 'train.learning_rate'" in line


def test_unknown_format_names_key(tmp_path):
    path = write_config(tmp_path, tmp_path / "d.json", dataset={"format": "alpacca"})
    line = one_line_error(tuneforge("config", "check", path))
    assert "data.datasets.0.format" in line and "'alpaca'" in line


@needs_assets
def test_malformed_json_line_names_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "a", "response": "b"}\n{"query": "c", "response": \n', encoding="utf-8")
    line = one_line_error(tuneforge("data", "render", write_config(tmp_path, data), "--out", str(tmp_path / "o.jsonl")))
    assert f"{data}:2: invalid JSON line" in line


@needs_assets
def test_missing_columns_name_file_and_line(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n', encoding="utf-8")
    line = one_line_error(
        tuneforge(
            "data", "render", write_config(tmp_path, data, dataset={"format": "alpaca"}), "--out", str(tmp_path / "o")
        )
    )
    assert f"{data}:3: missing column(s) ['output']" in line


@needs_assets
def test_empty_dataset(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[]", encoding="utf-8")
    line = one_line_error(tuneforge("data", "render", write_config(tmp_path, data), "--out", str(tmp_path / "o")))
    assert f"{data}: the dataset is empty" in line


@needs_assets
def test_max_length_too_small_for_every_sample(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "hello " * 20, "output": "world " * 20}] * 3), encoding="utf-8")
    line = one_line_error(
        tuneforge(
            "data",
            "render",
            write_config(tmp_path, data, max_length=16, cache_dir=str(tmp_path / "c")),
            "--out",
            str(tmp_path / "o"),
        )
    )
    assert "longer than data.max_length=16" in line


def test_missing_config_file(tmp_path):
    line = one_line_error(tuneforge("config", "check", str(tmp_path / "nope.yaml")))
    assert "nope.yaml: config file not found" in line


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: x\n data: [\n", encoding="utf-8")
    line = one_line_error(tuneforge("config", "check", str(path)))
    assert f"{path}:3: invalid YAML" in line


@pytest.mark.parametrize("override", ["train.epochs=0", "nodots"])
def test_bad_override(tmp_path, override):
    path = write_config(tmp_path, tmp_path / "d.json")
    line = one_line_error(tuneforge("config", "check", path, override))
    assert "train.epochs" in line or "expected key.sub=value" in line
