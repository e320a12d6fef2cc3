"""The data stage: truncation and dropping are counted, and the tokenized cache is reused."""

from __future__ import annotations

import json

import pytest
from conftest import needs_assets

from tuneforge.config import DataConfig
from tuneforge.data import prepare as prepare_module
from tuneforge.data.prepare import prepare
from tuneforge.data.render import IGNORE
from tuneforge.objective import SFT


def _data(tmp_path, **extra) -> DataConfig:
    path = tmp_path / "d.json"
    rows = [
        {"instruction": "short", "output": "ok"},
        {"instruction": "long", "output": "answer " * 60},
        {"instruction": "q", "output": "a"},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return DataConfig(datasets=[{"path": str(path)}], max_length=48, cache_dir=str(tmp_path / "cache"), **extra)


@needs_assets
def test_drop_counts_over_long_samples(tmp_path, qwen3_tokenizer):
    lines = []
    data = prepare(_data(tmp_path), qwen3_tokenizer, log=lines.append, objective=SFT)
    assert len(data.train) == 2 and data.dropped["too_long"] == 1
    assert any("too long: 1" in line for line in lines)


@needs_assets
def test_truncate_keeps_samples_cut_to_max_length(tmp_path, qwen3_tokenizer):
    data = prepare(_data(tmp_path, truncation="truncate"), qwen3_tokenizer, log=lambda *_: None, objective=SFT)
    lengths = sorted(len(ids) for ids in data.train["input_ids"])
    assert len(lengths) == 3 and lengths[-1] == 48 and data.dropped["truncated (kept)"] == 1


@needs_assets
def test_sample_left_without_trained_tokens_is_dropped(tmp_path, qwen3_tokenizer):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "long " * 60, "output": "a"}, {"instruction": "q", "output": "a"}]))
    cfg = DataConfig(
        datasets=[{"path": str(path)}], max_length=32, truncation="truncate", cache_dir=str(tmp_path / "cache")
    )
    data = prepare(cfg, qwen3_tokenizer, log=lambda *_: None, objective=SFT)
    assert len(data.train) == 1 and data.dropped["no_trained_token"] == 1
    assert any(label != IGNORE for label in data.train[0]["labels"])


@needs_assets
def test_tokenized_cache_is_reused_and_keyed_by_settings(tmp_path, qwen3_tokenizer, monkeypatch):
    cfg = _data(tmp_path)
    first = prepare(cfg, qwen3_tokenizer, log=lambda *_: None, objective=SFT)

    def no_rendering(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(prepare_module, "render", no_rendering)
    again = prepare(cfg, qwen3_tokenizer, log=lambda *_: None, objective=SFT)
    assert again.train["input_ids"] == first.train["input_ids"]
    with pytest.raises(AssertionError, match="cache should have been used"):
        prepare(_data(tmp_path, thinking="keep_empty"), qwen3_tokenizer, log=lambda *_: None, objective=SFT)


def _lengths_data(tmp_path, long_answers: list[int], truncation: str = "drop") -> DataConfig:
    rows = [{"instruction": "q", "output": "a"}] * (20 - len(long_answers))
    rows += [{"instruction": "long", "output": " ".join(["answer"] * n)} for n in long_answers]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return DataConfig(
        datasets=[{"path": str(path)}], max_length=48, truncation=truncation, cache_dir=str(tmp_path / "cache")
    )


def _rendered_length(tokenizer, answer: str) -> int:
    """Token count of a sample, by the tokenizer's own template (what render() reproduces)."""
    messages = [{"role": "user", "content": "long"}, {"role": "assistant", "content": answer}]
    return len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"])


@needs_assets
@pytest.mark.parametrize(("truncation", "action", "kept"), [("drop", "drops", 18), ("truncate", "truncates", 20)])
def test_large_max_length_cut_warns_with_the_length_that_keeps_95_percent(
    tmp_path, qwen3_tokenizer, truncation, action, kept
):
    lines = []
    data = prepare(_lengths_data(tmp_path, [60, 80], truncation), qwen3_tokenizer, log=lines.append, objective=SFT)
    assert len(data.train) == kept
    keeps_95 = _rendered_length(qwen3_tokenizer, " ".join(["answer"] * 60))  # the 19th shortest of 20
    assert keeps_95 > 48
    warning = f"warning: data.max_length=48 {action} 2 of 20 samples (10.0 %); data.max_length={keeps_95} keeps 95 %"
    assert [line for line in lines if line.startswith("warning:")] == [warning + " of them whole"]


@needs_assets
def test_max_length_dropping_5_percent_does_not_warn(tmp_path, qwen3_tokenizer):
    lines = []
    prepare(_lengths_data(tmp_path, [60]), qwen3_tokenizer, log=lines.append, objective=SFT)
    assert "data: too long: 1" in lines
    assert [line for line in lines if line.startswith("warning:")] == []
