"""`tuneforge eval` end to end on tiny Qwen3s: one model load for base and adapter, offline, benchmarks read."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import ASSETS, DATA_DIR, needs_assets
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import validate
from tuneforge.train.run import train

NAME, AUTHOR = "马哥教育AI小助手", "马哥教育AI团队"
EVAL_DIR = ASSETS / "eval"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread while this module runs, for speed only (the probe recipe passes at 1 and 2 threads, see
    trained_run): on 2 cores shared with other jobs (load 13) two threads ran its training steps about 5x slower
    (9 s against 1.3 s per step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(tiny_qwen3_dir, tmp_path_factory, one_thread):
    """A tiny Qwen3 with LoRA trained on self-cognition data, 10 records held out for validation.

    The random base's output layer decides which tokens come out, so the recipe trains `lm_head` in full beside LoRA
    (rank 16, alpha 32; `modules_to_save`, untied from the input embeddings), with a cosine decay from 3e-2 after 3
    warm-up steps, 60 steps of 8. Swept over train.seed = data.seed (model init, LoRA init, split, order) and torch
    threads, probe answers with the name / author out of 10: seeds 42, 1, 7 x 1 and 2 threads, 10 in all six
    (held-out loss 13.3 -> 2.5, 3.6, 3.1, the same at both thread counts). LoRA alone on the same budget (constant 3e-2)
    got 10 at seed 42 but 6 at seed 1; LoRA on lm_head instead of training it in full: 0 at seed 1. Fewer steps
    are not robust (45: 7 at seed 42; 30: 8 or 9 at one thread), and the full lm_head makes a step about 2.4x
    dearer (60 steps: 65 s against 27 s for LoRA alone, one thread, measured back to back).
    """
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = validate(
        {
            "model": {"name_or_path": str(tiny_qwen3_dir), "init": "random"},
            "data": {
                "datasets": [
                    {"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": NAME, "author": AUTHOR}}
                ],
                "max_length": 256,
                "val_size": 10,
                "cache_dir": str(out.parent / "cache"),
            },
            "method": {"type": "lora", "rank": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["lm_head"]},
            "train": {
                "max_steps": 60,
                "learning_rate": 3e-2,
                "lr_scheduler": "cosine",
                "warmup_steps": 3,
                "per_device_batch_size": 8,
            },
            "output": {"dir": str(out)},
        }
    )
    return train(cfg, log=lambda *_: None).root


@pytest.fixture
def offline(monkeypatch):
    """No socket can connect: whatever tries the network fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@needs_assets
def test_self_cognition_probe_and_heldout_loss_improve_with_one_model_load(trained_run, offline, monkeypatch):
    import tuneforge.model.load as load
    from tuneforge.eval.suite import PROBE_QUESTIONS

    loads = []
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))

    # The run trained on data without reasoning (data.thinking: auto): its prompts ended in the empty think block.
    assert json.loads((trained_run / "run.json").read_text())["thinking"] == {"data.thinking": "auto", "modes": ["off"]}
    # The shipped self-cognition suite: held-out loss, and the probe's name and author questions; no --think flag:
    # the run is evaluated in the mode it trained in (issue 25: in the template's own mode nearly every tuned answer
    # started with a junk token and the probe scored 0.9).
    result = CliRunner().invoke(app, ["eval", "--run", str(trained_run), "--suite", "self-cognition"])
    assert result.exit_code == 0, result.output
    assert "eval: thinking off: the mode run trained in" in result.output
    assert len(loads) == 1  # baseline = the same model with the adapter off

    report = trained_run / "eval" / "self-cognition"
    results = json.loads((report / "results.json").read_text())
    probe = results["tasks"]["self-cognition"]
    assert probe["metrics"]["accuracy"]["baseline"] == 0.0
    assert probe["metrics"]["accuracy"]["tuned"] == 1.0
    n_name, n_author = len(PROBE_QUESTIONS["name"]), len(PROBE_QUESTIONS["author"])
    assert probe["n"] == n_name + n_author and results["thinking"] == "off" and results["models"]["tuned"] == "run"
    loss = results["tasks"]["heldout-loss"]["metrics"]["loss"]
    assert loss["tuned"] < loss["baseline"] - 1.0 and results["tasks"]["heldout-loss"]["n"] == 10

    samples = [json.loads(line) for line in (report / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 10 + 2 * (n_name + n_author)
    tuned = [s for s in samples if s["task"] == "self-cognition" and s["model"] == "tuned"]
    # Both kinds of question pass on their own, not only on average: names and authors.
    for gold, count in (NAME, n_name), (AUTHOR, n_author):
        kind = [s["correct"] for s in tuned if s["gold"] == gold]
        assert len(kind) == count and all(kind)
    # No junk first token: every tuned answer opens as some training answer does (您好, 作为, I am, ...).
    openings = {record["output"][:2] for record in json.loads((DATA_DIR / "identity.json").read_text())}
    assert all(s["output"][:2] in openings for s in tuned), [s["output"][:12] for s in tuned]
    first = next(s for s in samples if s["task"] == "self-cognition" and s["model"] == "tuned")
    assert first["prompt"] == "<|im_start|>user\n你是谁？<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert first["gold"] == NAME and first["outcome"] in ("correct", "wrong") and "correct" in first
    table = (report / "report.md").read_text()
    assert "| self-cognition | accuracy | 0.0000 |" in table and "| heldout-loss | perplexity |" in table
    assert (report / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert "self-cognition" in result.output and "accuracy" in result.output  # the console table
    # run.json records the report and what it judged: both sides' fingerprints (the adapter's among them).
    entry = json.loads((trained_run / "run.json").read_text())["artifacts"]["eval/self-cognition"]
    assert entry["path"] == "eval/self-cognition" and entry["made_from"]["thinking"] == "off"
    assert len(entry["made_from"]["models"]) == 2 and entry["made_from"]["limit"] is None


@needs_assets
@pytest.mark.skipif(not EVAL_DIR.is_dir(), reason=f"benchmark files not found at {EVAL_DIR} (../shared/assets)")
def test_cmmlu_mmlu_gsm8k_and_math500_run_end_to_end(tiny_qwen3_dir, tmp_path, offline):
    suite = tmp_path / "bench.yaml"
    suite.write_text(
        f"""name: bench
tasks:
  - {{name: cmmlu, type: mcq, path: {EVAL_DIR / "cmmlu"}, shots: 1}}
  - {{name: mmlu, type: mcq, path: {EVAL_DIR / "mmlu"}}}
  - {{name: cmmlu-gen, type: mcq, path: {EVAL_DIR / "cmmlu"}, method: generate, max_new_tokens: 8}}
  - {{name: gsm8k, type: math, path: {EVAL_DIR / "gsm8k/gsm8k_test_first200.jsonl"}, max_new_tokens: 8}}
  - {{name: math500, type: math, path: {EVAL_DIR / "math500/math500_test.jsonl"}, max_new_tokens: 8}}
""",
        encoding="utf-8",
    )
    out = tmp_path / "report"
    args = ["eval", "--model", str(tiny_qwen3_dir), "--suite", str(suite), "--limit", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["cmmlu", "mmlu", "cmmlu-gen", "gsm8k", "math500"]
    assert all(t["n"] == 3 and list(t["metrics"]["accuracy"]) == ["tuned"] for t in results["tasks"].values())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by_task = {}
    for s in samples:
        by_task.setdefault(s["task"], []).append(s)
    # Round robin over subjects: the first three questions come from the first three subjects.
    assert [s["id"] for s in by_task["cmmlu"]] == ["agronomy/0", "anatomy/0", "ancient_chinese/0"]
    assert [s["id"] for s in by_task["mmlu"]] == ["abstract_algebra/0", "anatomy/0", "astronomy/0"]
    assert by_task["mmlu"][0]["gold"] == "B" and by_task["mmlu"][0]["pred"] in "ABCD"
    assert by_task["mmlu"][0]["choices"] == ["0", "4", "2", "6"]
    # One dev example as a previous turn, then the question.
    assert by_task["cmmlu"][0]["prompt"].count("以下是关于agronomy的单项选择题") == 2
    assert [s["gold"] for s in by_task["gsm8k"]] == ["18", "3", "70000"]
    assert by_task["math500"][0]["gold"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert all(s["outcome"] in ("correct", "wrong", "thinking_truncated") for s in samples)
    assert results["tasks"]["cmmlu"]["subjects"].keys() == {"agronomy", "anatomy", "ancient_chinese"}


def test_suite_with_an_unknown_key_is_one_line_naming_it(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: x, type: mcq, shot: 5}\n")
    result = CliRunner().invoke(app, ["eval", "--model", "m", "--suite", str(suite), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"error: {suite}: unknown key 'tasks.0.shot'; did you mean 'tasks.0.shots'?" in result.output
