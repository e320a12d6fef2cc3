"""Discoverable config: --version, `config show` from the schema, and docs/config.md kept equal to it."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from tuneforge import __version__
from tuneforge.cli import app
from tuneforge.config import (
    Config,
    DataConfig,
    DatasetConfig,
    DistributedConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
)
from tuneforge.config_grpo import GRPOSection, RewardConfig
from tuneforge.config_reference import REGENERATE, keys, reference

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    ModelConfig,
    DataConfig,
    DatasetConfig,
    MethodConfig,
    GRPOSection,
    RewardConfig,
    TrainConfig,
    OutputConfig,
    DistributedConfig,
)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def columns(output: str) -> dict[str, list[str]]:
    """`config show` lines by key: [value, allowed, description] (columns are separated by 2+ spaces)."""
    rows = [re.split(r"\s{2,}", line, maxsplit=3) for line in output.splitlines()[1:]]
    return {row[0]: row[1:] for row in rows}


def test_version():
    result = invoke("--version")
    assert (result.exit_code, result.output) == (0, f"tuneforge {__version__}\n")


def test_config_show_lists_every_leaf_key_with_default_allowed_and_description():
    result = invoke("config", "show")
    assert result.exit_code == 0, result.output
    assert re.split(r"\s{2,}", result.output.splitlines()[0]) == ["key", "default", "allowed", "description"]
    shown = columns(result.output)
    # Every field of every section, except the nested ones (data.datasets, method.grpo, method.grpo.rewards), which
    # are shown as their keys.
    assert len(shown) == len(result.output.splitlines()) - 1 == sum(len(s.model_fields) for s in SECTIONS) - 3
    assert shown["model.dtype"] == [
        "auto",
        "auto | bf16 | fp16 | fp32",
        "auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU.",
    ]
    assert shown["model.name_or_path"][:2] == ["(required)", "str"]
    assert shown["data.datasets[].weight"][:2] == ["null", "float > 0 | null"]
    assert shown["data.thinking"][:2] == ["auto", "auto | 'off' | keep_empty"]  # YAML reads a bare off as false
    assert shown["method.dropout"] == ["0.05", "float >= 0, < 1", "Dropout on the LoRA input."]
    assert shown["distributed.master_port"][:2] == ["null", "int >= 1, <= 65535 | null"]
    assert shown["method.target_modules"][:2] == ["all-linear", "str | list of str"]


def test_config_show_with_a_config_prints_its_values():
    example = ROOT / "examples" / "qwen3-8b-self-cognition-lora.yaml"
    result = invoke("config", "show", str(example), "train.epochs=1")
    assert result.exit_code == 0, result.output
    shown = columns(result.output)
    assert result.output.splitlines()[0].split()[:3] == ["key", "value", "allowed"]
    assert shown["model.name_or_path"][0] == "Qwen/Qwen3-8B"
    assert shown["method.alpha"][0] == "32" and shown["train.epochs"][0] == "1.0"
    assert shown["data.datasets[0].placeholders"][0] == "{name: 马哥教育AI小助手, author: 马哥教育AI团队}"
    assert shown["train.max_steps"][0] == "null"  # not in the file: the default


def test_config_show_keeps_a_multi_line_value_on_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {name_or_path: x}\noutput: {dir: o}\n"
        "data:\n  datasets:\n    - path: d.json\n      system: |\n        Line one.\n        Line two.\n",
        encoding="utf-8",
    )
    result = invoke("config", "show", str(path))
    assert result.exit_code == 0, result.output
    assert columns(result.output)["data.datasets[0].system"][0] == '"Line one.\\nLine two.\\n"'
    assert len(result.output.splitlines()) == 1 + len(keys()[0])


def test_config_show_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\ndata: {datasets: [{path: d}]}\noutput: {dir: o}\ntrain: {epoch: 1}\n")
    result = invoke("config", "show", str(bad))
    assert result.exit_code == 2
    assert result.output == f"error: {bad}: unknown key 'train.epoch'; did you mean 'train.epochs'?\n"


def test_every_field_and_section_has_a_description():
    rows, sections = keys()
    assert [k.path for k in rows if not k.description] == []
    assert [name for name, description in sections.items() if not description] == []
    assert list(sections) == [
        *("model", "data", "data.datasets[]", "method", "method.grpo", "method.grpo.rewards[]"),
        *("train", "output", "distributed"),
    ]
    assert len(rows) == len({k.path for k in rows})
    assert {k.section for k in rows} == set(sections) and Config.model_fields.keys() <= set(sections)


def test_docs_config_md_matches_the_schema():
    docs = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert docs == reference(markdown=True), f"docs/config.md is out of date with config.py; run: {REGENERATE}"


def test_markdown_written_by_config_show_out(tmp_path):
    out = tmp_path / "config.md"
    result = invoke("config", "show", "--markdown", "--out", str(out))
    assert (result.exit_code, result.output) == (0, f"wrote {out}\n")
    text = out.read_text(encoding="utf-8")
    assert text == reference(markdown=True)
    assert "| `train.optim` | adamw_torch | adamw_torch \\| adamw_8bit \\| paged_adamw_8bit" in text
