"""The config schema: the issue's example works as written, shipped examples validate, overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import apply_overrides, load_config, validate
from tuneforge.errors import UserError

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_validates(path):
    cfg = load_config(path)
    assert cfg.output.dir.startswith("finetuned/")


def test_issue_example_as_written():
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "qwen3-8b-self-cognition-lora.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen3-8B" and cfg.model.hub == "huggingface"
    assert cfg.data.datasets[0].placeholders == {"name": "马哥教育AI小助手", "author": "马哥教育AI团队"}
    assert (cfg.method.rank, cfg.method.alpha, cfg.method.dropout) == (8, 32, 0.1)
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation, cfg.train.save_steps) == (4, 4, 100)


def test_overrides_parse_yaml_values():
    raw = apply_overrides({"train": {}}, ["train.epochs=1", "train.resume=auto", "data.val_size=0.1"])
    assert raw == {"train": {"epochs": 1, "resume": "auto"}, "data": {"val_size": 0.1}}


def test_all_problems_reported_at_once():
    with pytest.raises(UserError) as err:
        validate(
            {
                "model": {"name_or_path": "x", "dtyp": "bf16"},
                "data": {"datasets": [{"path": "d"}]},
                "output": {},
                "trian": {},
            }
        )
    lines = str(err.value).splitlines()
    assert "config: unknown key 'model.dtyp'; did you mean 'model.dtype'?" in lines
    assert "config: missing required key 'output.dir'" in lines
    assert "config: unknown key 'trian'; did you mean 'train'?" in lines
