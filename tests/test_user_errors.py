"""User mistakes give one line naming the file and line, or the key, exit non-zero, and print no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_QWEN3, TOKENIZER_DIR, needs_assets
from test_export_merge import error_line
from typer.testing import CliRunner

from tuneforge.cli import app


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


def write_config(tmp_path, data_path, sections: dict | None = None, **data_extra) -> str:
    cfg = {
        "model": {"name_or_path": str(TOKENIZER_DIR), "init": "random"},
        "data": {"datasets": [{"path": str(data_path), **data_extra.pop("dataset", {})}], **data_extra},
        "output": {"dir": str(tmp_path / "run")},
    }
    for section, values in (sections or {}).items():
        cfg.setdefault(section, {}).update(values)
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


# --- every bad input of issue 11, item 5: one line naming the file or key, exit 2, no traceback -----------------
# Each case builds its inputs in tmp_path and returns (CLI arguments, text the error line must contain); the CLI
# runs with tmp_path as its working folder. Cases that need a model stop before any weights load.


def render(tmp_path: Path, data: Path, **data_extra) -> list[str]:
    """`data render` of a config reading `data` (with the real tokenizer)."""
    return ["data", "render", write_config(tmp_path, data, **data_extra), "--out", str(tmp_path / "o.jsonl")]


def data_file(tmp_path: Path, name: str, content: str | bytes | list) -> Path:
    path = tmp_path / name
    if isinstance(content, list):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def model_folder(tmp_path: Path, tokenizer: bool = True, **config) -> Path:
    """A model folder with a tiny Qwen3 config.json (no weights), and the real tokenizer unless told otherwise."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **TINY_QWEN3, **config}
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        for file in TOKENIZER_DIR.iterdir():
            shutil.copy(file, folder)
    return folder


def unwritable(tmp_path: Path) -> Path:
    """A folder nothing can be created in: read-only for users; for root (who ignores modes), inside sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/tuneforge-test")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    return folder


def train(tmp_path: Path, model: Path | None = None, **sections) -> list[str]:
    """`train` of a config with the given sections (data need not exist: these cases stop before reading it)."""
    if model is not None:
        sections["model"] = {"name_or_path": str(model), "init": "pretrained", **sections.get("model", {})}
    return ["train", write_config(tmp_path, tmp_path / "d.json", sections=sections)]


def check(tmp_path: Path, data: Path | str | None = None, **sections) -> list[str]:
    """`config check` of a config with the given sections, reading `data` (default: an existing file)."""
    return ["config", "check", write_config(tmp_path, data or data_file(tmp_path, "d.json", []), sections=sections)]


def case_unwritable_output_dir(tmp_path):
    target = unwritable(tmp_path) / "run"
    return train(tmp_path, output={"dir": str(target)}), f"output.dir: cannot write to {target.parent}"


def case_output_dir_is_a_file(tmp_path):
    data_file(tmp_path, "taken", "x")
    args = train(tmp_path, output={"dir": str(tmp_path / "taken")})
    return args, f"output.dir: {tmp_path / 'taken'} is an existing file"


def case_out_is_a_folder_render(tmp_path):
    args = ["data", "render", write_config(tmp_path, tmp_path / "d.json"), "--out", str(tmp_path)]
    return args, f"--out: {tmp_path} is a folder; give a file path"


def case_out_is_a_folder_gguf(tmp_path):
    args = ["export", "gguf", "--model", str(tmp_path), "--out", str(tmp_path), "--force"]
    return args, f"--out: {tmp_path} is a folder; give a file path"


def case_bad_override_value(tmp_path):
    return [*check(tmp_path), "train.epochs=["], "override 'train.epochs=[': the value is not valid YAML"


def case_config_not_utf8(tmp_path):
    path = data_file(tmp_path, "c.yaml", "model:\n  name_or_path: caf\xe9\n".encode("latin-1"))
    return ["config", "check", str(path)], f"{path}:2: not UTF-8 text (byte 0xe9)"


@needs_assets
def case_corrupt_parquet(tmp_path):
    data = data_file(tmp_path, "d.parquet", b"PAR1 this is not parquet PAR1")
    return render(tmp_path, data), f"{data}: not a valid parquet file"


def case_corrupt_safetensors_export(tmp_path):
    folder = model_folder(tmp_path, tokenizer=False)
    data_file(folder, "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    args = ["export", "gguf", "--model", str(folder), "--out", str(tmp_path / "m.gguf")]
    return args, f"{folder / 'model.safetensors'}: not a valid safetensors file"


@needs_assets
def case_corrupt_safetensors_load(tmp_path):
    folder = model_folder(tmp_path)
    data_file(folder, "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return ["chat", "--model", str(folder), "--prompt", "hi"], f"model.name_or_path: {folder}: could not be loaded"


def case_corrupt_gguf(tmp_path):
    gguf = data_file(tmp_path, "m.gguf", b"GGUF\x03\x00\x00\x00" + b"\x01" * 30)
    args = ["export", "ollama", "--gguf", str(gguf), "--out", str(tmp_path / "ollama")]
    return args, f"{gguf}: not a valid GGUF file"


@needs_assets
def case_tools_not_objects(tmp_path):
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": [1, 2]}
    data = data_file(tmp_path, "d.jsonl", json.dumps(record) + "\n")
    return render(tmp_path, data), f"{data}:1: tools: expected a list of tool definitions (JSON objects)"


@needs_assets
def case_sharegpt_role_not_text(tmp_path):
    record = {"conversations": [{"from": ["human"], "value": "a"}, {"from": "gpt", "value": "b"}]}
    data = data_file(tmp_path, "d.jsonl", json.dumps(record) + "\n")
    return render(tmp_path, data), f"{data}:1: conversations[0].from: unknown role ['human']"


def case_unknown_lr_scheduler(tmp_path):
    args = check(tmp_path, train={"lr_scheduler": "cosin"})
    return args, "train.lr_scheduler: unknown scheduler 'cosin'; did you mean 'cosine'?"


@needs_assets
def case_unknown_target_modules(tmp_path):
    args = train(tmp_path, model_folder(tmp_path), method={"target_modules": ["q_proj", "qkv"]})
    return args, "method.target_modules: 'qkv' matches no linear layer of Qwen3ForCausalLM; its linear layers are"


def case_resume_with_another_config(tmp_path):
    from tuneforge.config import load_config, save_config

    first = write_config(tmp_path, tmp_path / "d.json", sections={"method": {"rank": 4}})
    save_config(load_config(first), tmp_path / "run" / "config.yaml")
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    args = train(tmp_path, method={"rank": 8}, train={"resume": "auto"})
    return args, f"train.resume: {checkpoint} was made with method.rank=4 but this config has 8"


def case_folder_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    return train(tmp_path, tmp_path / "empty"), f"model.name_or_path: {tmp_path / 'empty'} has no config.json"


def case_not_a_causal_model(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return train(tmp_path, folder), f"model.name_or_path: {folder} is a BertForMaskedLM, not a causal language model"


def case_missing_tokenizer(tmp_path):
    folder = model_folder(tmp_path, tokenizer=False)
    config = write_config(tmp_path, tmp_path / "d.json", sections={"model": {"name_or_path": str(folder)}})
    args = ["data", "render", config, "--out", str(tmp_path / "o")]
    return args, f"model.name_or_path: {folder} has no tokenizer files"


@needs_assets
def case_null_value(tmp_path):
    data = data_file(tmp_path, "d.json", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}])
    return render(tmp_path, data), f"{data}:1: empty value(s) output=None"


@needs_assets
def case_empty_value(tmp_path):
    data = data_file(tmp_path, "d.jsonl", '{"query": "", "response": "b"}\n')
    return render(tmp_path, data), f"{data}:1: empty value(s) query=''"


def case_relative_data_path(tmp_path):
    tried = (tmp_path / "data" / "train.json").resolve()
    return check(tmp_path, "data/train.json"), (
        f"data.datasets.0.path: data/train.json: not found (tried {tried}: relative paths are read from the current "
        f"folder {tmp_path.resolve()}"
    )


@needs_assets
def case_json_missing_comma(tmp_path):
    data = data_file(tmp_path, "d.json", '[\n{"query": "a", "response": "b"}\n{"query": "c", "response": "d"}\n]\n')
    return render(tmp_path, data), f"{data}:3: invalid JSON (expected ',' or ']' after a record, found '{{')"


@needs_assets
def case_no_user_turn(tmp_path):
    record = {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]}
    data = data_file(tmp_path, "d.jsonl", json.dumps(record) + "\n")
    return render(tmp_path, data), f"{data}:1: no user turn"


def case_check_missing_model_folder(tmp_path):
    args = check(tmp_path, model={"name_or_path": "./models/qwen3"})
    return args, "model.name_or_path: ./models/qwen3: not found (tried"


def case_check_missing_data_file(tmp_path):
    return check(tmp_path, tmp_path / "nope.jsonl"), f"data.datasets.0.path: {tmp_path / 'nope.jsonl'}: not found"


def case_warmup_steps_and_ratio(tmp_path):
    args = check(tmp_path, train={"warmup_steps": 10, "warmup_ratio": 0.1})
    return args, "train.warmup_steps: 10 and train.warmup_ratio: 0.1 are both set; keep one of them"


def case_lora_keys_under_full(tmp_path):
    args = check(tmp_path, method={"type": "full", "rank": 16, "target_modules": ["q_proj"]})
    return args, "method.rank: rank, target_modules have no effect with method.type: full"


def case_eval_steps_without_validation(tmp_path):
    args = check(tmp_path, train={"eval_steps": 5})
    return args, "train.eval_steps: 5 needs a validation split; set data.val_size"


CASES = {name.removeprefix("case_"): fn for name, fn in list(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", [pytest.param(n, marks=getattr(f, "pytestmark", [])) for n, f in CASES.items()])
def test_bad_input_is_one_line(tmp_path, monkeypatch, case):
    # In-process (typer's CliRunner) to keep 28 cases fast; an uncaught exception would exit 1, not 2.
    args, expected = CASES[case](tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output
    line = error_line(result)
    assert expected in line, line


@pytest.mark.parametrize(
    ("args", "option", "choices"),
    [
        (["data", "preview", "c.yaml", "--split", "nope"], "--split", "'train', 'validation'"),
        (["export", "gguf", "--model", "m", "--out", "o.gguf", "--type", "nope"], "--type", "'f32', 'f16', 'bf16'"),
        (["serve", "--engine", "nope"], "--engine", "'auto', 'transformers', 'vllm', 'sglang'"),
        (["estimate", "--method", "nope"], "--method", "'lora', 'qlora', 'full'"),
        (["download", "x/y", "--hub", "nope"], "--hub", "'huggingface', 'modelscope'"),
    ],
)
def test_bad_choice_is_one_usage_error_naming_the_choices(tmp_path, args, option, choices):
    env = {**os.environ, "COLUMNS": "300"}  # the message is one line; a narrow terminal would wrap its box
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(lines) == 1, result.stderr
    assert f"Invalid value for '{option}'" in lines[0] and f"'nope' is not one of {choices}" in lines[0]
    assert not list(tmp_path.iterdir())  # refused before anything ran
