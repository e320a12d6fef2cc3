"""synth end to end: its dataset trains with `tuneforge train` and its eval split runs with `tuneforge eval`; and
a run against the real `tuneforge serve` (a tiny random Qwen3: replies are never valid JSON) accounts for it all."""

from __future__ import annotations

import json
import re
from importlib.metadata import packages_distributions

import pytest
import yaml
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from synth_server import ScriptedServer
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.commands.synth import SYNTH_MODULES
from tuneforge.errors import UserError
from tuneforge.synth.config import validate_synth
from tuneforge.synth.run import synth


def _docs(folder):
    folder.mkdir()
    for i, topic in enumerate(["filters", "badges", "反应堆"]):
        text = f"# {topic}\n\n" + " ".join(
            f"Rule {i}.{j}: the {topic} are checked every {j + 2} days." for j in range(12)
        )
        (folder / f"doc{i}.md").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow  # trains a tiny model and evaluates it (~1-2 min on 2 CPU cores)
def test_synth_data_trains_and_its_eval_split_runs(tiny_qwen3_dir, tmp_path):
    out = tmp_path / "out"
    with ScriptedServer(faults=False) as server:
        raw = {
            "docs": str(_docs(tmp_path / "docs")),
            "out": str(out),
            "model": {"endpoint": server.url, "name": "scripted"},
            "generate": {"questions_per_chunk": 3},
            "quality": {"judge": False},
            "output": {"eval_fraction": 0.34, "seed": 1},
        }
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
    assert report["written"]["train"] > 0 and report["written"]["eval"] > 0
    config = {
        "model": {"name_or_path": str(tiny_qwen3_dir), "init": "random"},
        "data": {
            **yaml.safe_load(_snippet(out))["data"],
            "max_length": 256,
            "cache_dir": str(tmp_path / "cache"),
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8},
        "train": {"max_steps": 2, "per_device_batch_size": 4, "save_steps": 1000, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "train.yaml")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        app, ["eval", "--run", str(tmp_path / "run"), "--suite", str(out / "eval_suite.yaml"), "--no-think"]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run/eval/synth/results.json").read_text())
    assert results["tasks"]["synth-heldout"]["n"] == report["written"]["eval"]


def _snippet(out):
    from tuneforge.synth.output import train_snippet

    return train_snippet(out, "messages")


@pytest.mark.slow  # a real server over a tiny model
def test_synth_with_a_local_model_dir_gets_valid_json_and_accounts_for_every_pair(tiny_qwen3_dir, tmp_path):
    """`--model-dir`: the model runs in this process behind `tuneforge serve`'s app, whose structured output makes
    even a random-weight model answer the questions step with JSON that validates (its strings end at the schema's
    bounds); its free-text answer never ends, so that pair fails as cut off. No pair fails for its JSON, every
    requested pair is accounted for, and the eval suite has no judge pointing at the server that is gone."""
    pytest.importorskip("xgrammar", reason="the structured extra (xgrammar) is not installed")
    docs, out = tmp_path / "docs", tmp_path / "out"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe filter is replaced every spring by the night shift.\n", encoding="utf-8")
    args = ["--docs", str(docs), "--model-dir", str(tiny_qwen3_dir), "--out", str(out)]
    overrides = ["model.max_tokens=600", "model.temperature=0", "generate.questions_per_chunk=2"]
    result = CliRunner().invoke(app, ["synth", *overrides, *args])
    assert result.exit_code == 1, result.output  # every pair failed: over budget.max_failure_rate
    report = json.loads((out / "report.json").read_text())
    assert report["requested"] == 2
    assert report["written"]["total"] + report["failed"]["total"] + report["filtered"]["total"] == 2
    reasons = {**report["failed"]["by_reason"], **report["filtered"]["by_reason"]}
    assert not [r for r in reasons if "JSON" in r], reasons
    assert report["requests"]["sent_by_step"]["questions"] == 1  # one valid reply, no retry
    answered = report["requests"]["sent_by_step"]["answer"]  # a request per question the valid reply held
    assert answered >= 1 and reasons.get("answer: cut off at model.max_tokens") == answered
    suite = yaml.safe_load((out / "eval_suite.yaml").read_text())
    assert [t["name"] for t in suite["tasks"]] == ["synth-heldout"]


def test_a_synth_model_is_an_endpoint_or_a_local_path_and_a_local_one_serves_only_itself(tmp_path):
    base = {"docs": "d", "out": "o"}
    for model, problem in [
        ({"name": "m"}, "give model.endpoint (a server) or model.path (a local model run here), one of them"),
        (
            {"endpoint": "http://x", "path": "p"},
            "give model.endpoint (a server) or model.path (a local model run here), one of them",
        ),
        ({"endpoint": "http://x"}, "model.name: the model's name on model.endpoint is needed"),
    ]:
        with pytest.raises(UserError, match=f"^s.yaml: {re.escape(problem)}"):
            validate_synth({**base, "model": model}, "s.yaml")
    local = {**base, "model": {"path": "p"}}
    with pytest.raises(UserError, match="quality.judge_model: model.path serves one model here"):
        validate_synth({**local, "quality": {"judge_model": "j"}}, "s.yaml")
    weak = {"preference": {"source": "weak_model", "weak": {"name": "w"}}}
    with pytest.raises(UserError, match="preference.weak.endpoint: model.path serves one model here"):
        validate_synth({**local, **weak}, "s.yaml")
    with pytest.raises(UserError, match="model.path p: not served"):
        synth(validate_synth(local, "s.yaml"), "EMPTY")


def test_synth_without_its_extra_says_what_to_install_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("aiohttp", "pptx") else real(name)
    )
    result = CliRunner().invoke(app, ["synth", "--docs", str(_docs(tmp_path / "d")), "--endpoint", "http://x"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: synth needs pptx, aiohttp: pip install 'tuneforge[synth]'"


def test_the_extra_check_covers_every_package_of_the_synth_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = [Requirement(line) for line in pyproject["project"]["optional-dependencies"]["synth"]]
    # openai[aiohttp]: the client's aiohttp transport is a package of its own.
    wanted = {canonicalize_name(r.name) for r in extra} | {"aiohttp"}
    installed = packages_distributions()
    assert {canonicalize_name(dist) for module in SYNTH_MODULES for dist in installed[module]} == wanted
