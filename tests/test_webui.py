"""The web UI: the form reaches every config key, the pickers and presets offer what their owners hold, jobs live in
their run folder, auth guards every route, runs compare side by side, and the whole flow (preset, pickers, launch,
watch, stop, resume, restart, chat, evaluate, export) works in a real headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import DATA_DIR, ROOT, needs_assets

pytest.importorskip("gradio", reason="the [webui] extra (gradio) is not installed")

from tuneforge.config import validate  # noqa: E402
from tuneforge.config_reference import keys  # noqa: E402
from tuneforge.errors import UserError  # noqa: E402
from tuneforge.rundir import Run  # noqa: E402
from tuneforge.webui import compare_tab, jobs, pickers, runner, schema, tools_tab, train_tab, watch_tab  # noqa: E402
from tuneforge.webui.app import credentials, is_loopback  # noqa: E402
from tuneforge.webui.i18n import WORDS  # noqa: E402
from tuneforge.webui.train_form import ESSENTIALS, elem_id  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TUNEFORGE_ARTIFACTS", ROOT / "tests" / "artifacts")) / "webui"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The page built over an empty runs folder, and its component per config key."""
    from tuneforge.webui.app import build_app

    return build_app(tmp_path_factory.mktemp("runs"))


def test_every_config_key_has_an_editable_component_with_a_plain_label_and_its_yaml_key(ui):
    page, fields = ui
    rows, _ = keys()
    assert len(rows) > 70
    rows = [k for k in rows if not k.path.startswith("method.grpo.rewards[]")]  # a list the YAML editor edits
    for key in rows:
        path = key.path.replace("[]", "[0]")  # data.datasets[] entries: the form's first dataset slot
        component = fields[path]
        assert component.interactive is True, path
        # The essentials hint their YAML key alone (a first screen that fits 1280x800); the others with their help.
        hint = component.info if path in ESSENTIALS else component.info.key
        assert (component.label.key, hint) == (f"label:{path}", path if path in ESSENTIALS else f"help:{path}"), path
        english, chinese = WORDS[f"help:{path}"]
        assert english == f"{path} · {key.description}", path  # the YAML key as the hint, the description as help
        assert chinese.startswith(f"{path} · ") and chinese != english, path  # help in Chinese too
        assert WORDS[f"label:{path}"][0] != path and "." not in WORDS[f"label:{path}"][0], path
        assert component.elem_id == elem_id(path)
        assert component in page.blocks.values(), path
    # Nothing in the form that the schema does not have: datasets slots aside, the two key sets are equal.
    first_slot = {p for p in fields if not p.startswith(("data.datasets[1]", "data.datasets[2]"))}
    assert first_slot == {k.path.replace("[]", "[0]") for k in rows}
    # Choices are the config's Literals: the method picker offers exactly what MethodConfig.type accepts.
    from typing import get_args

    from tuneforge.config import MethodConfig

    assert [c[1] for c in fields["method.type"].choices] == list(get_args(MethodConfig.model_fields["type"].annotation))
    assert [c[1] for c in fields["method.objective"].choices] == ["sft", "dpo", "orpo", "simpo", "kto", "grpo"]
    assert list(ESSENTIALS)[:4] == ["model.name_or_path", "method.type", "method.objective", "data.datasets[0].path"]


def test_pickers_list_local_models_data_files_presets_and_earlier_runs(tmp_path):
    from tuneforge.demo import write_data
    from tuneforge.estimate.shapes import QWEN3_SHAPES

    models = tmp_path / "models"
    for folder in ("tiny", "org/other"):
        (models / folder).mkdir(parents=True)
        (models / folder / "config.json").write_text("{}")
    (models / "not-a-model").mkdir()
    assert pickers.model_choices(models) == [str(models / "org" / "other"), str(models / "tiny"), *QWEN3_SHAPES]
    data = tmp_path / "data"
    write_data(data)
    (data / "notes.txt").write_text("not data")
    assert pickers.data_choices(data, ["org/set", "org/set"]) == [
        str(data / "huanhuan.json"), str(data / "self_cognition.json"), "org/set"
    ]  # fmt: skip

    runs = tmp_path / "runs"
    earlier = runs / "earlier"
    (earlier / "jobs").mkdir(parents=True)
    (earlier / "jobs" / "train.yaml").write_text("model: {name_or_path: x}\noutput: {dir: runs/earlier}\n")
    found = dict(pickers.presets(ROOT / "examples", runs))
    assert len(found) == len(list((ROOT / "examples").glob("*.yaml"))) + 1
    self_cognition = next(path for label, path in found.items() if label.startswith("Self-cognition LoRA"))
    assert found["again: earlier"] == str(earlier / "jobs" / "train.yaml")
    # A preset's run goes under the runs folder, never over an existing run ("train again like this": NAME-2).
    assert pickers.preset_config(self_cognition, runs)["output"]["dir"] == str(runs / "qwen3-8b-lora")
    assert pickers.preset_config(found["again: earlier"], runs)["output"]["dir"] == str(runs / "earlier-2")
    hub = pickers.hub_datasets(list(found.values()))
    assert "llamafactory/DPO-En-Zh-20k" in hub and not any(h.startswith("tuneforge-demo/") for h in hub)


@needs_assets
def test_dataset_summary_counts_detects_and_renders_the_first_sample(tiny_qwen3_dir, tmp_path):
    from tuneforge.demo import write_data

    data = write_data(tmp_path)[0]
    raw = {"model": {"name_or_path": str(tiny_qwen3_dir)},
           "data": {"datasets": [{"path": str(data), "placeholders": {"name": "小二", "author": "店家"}}]}}  # fmt: skip
    shown = pickers.dataset_summary(raw)
    assert "<b>40</b> records · format <b>alpaca</b>" in shown
    # The first record through Qwen3's chat template, placeholders filled.
    assert "&lt;|im_start|&gt;user\n你是谁？&lt;|im_end|&gt;" in shown and "小二" in shown and "{{name}}" not in shown
    raw["data"]["datasets"][0]["placeholders"] = {}
    assert "is left unfilled in" in pickers.dataset_summary(raw)
    raw["model"]["name_or_path"] = "Qwen/Qwen3-8B"  # no local model: the messages as they are
    assert "user: 你是谁？\nassistant: 我是{{name}}" in pickers.dataset_summary(raw)
    assert "a hub dataset" in pickers.dataset_summary({"data": {"datasets": [{"path": "org/set"}]}})
    raw["method"] = {"objective": "ppo"}  # an objective no trainer has: named, not read as sft
    with pytest.raises(UserError, match=r"^form: objective: Input should be .sft., .dpo."):
        pickers.dataset_summary(raw)


@needs_assets
def test_the_gpu_verdict_command_line_and_gpus_follow_the_form(tiny_qwen3_dir, tmp_path):
    raw = {"model": {"name_or_path": "Qwen/Qwen3-8B"}, "data": {"datasets": [{"path": "x.json"}], "max_length": 1024},
           "train": {"per_device_batch_size": 4, "gradient_checkpointing": True},
           "output": {"dir": str(tmp_path / "runs" / "r")}}  # fmt: skip
    assert train_tab.verdict_text(raw, 24).startswith("**24 GB**: fits on 24 GB (")
    raw["method"] = {"type": "full"}
    assert train_tab.verdict_text(raw, 24).startswith("**24 GB**: does not fit on 24 GB (")
    assert train_tab.verdict_text(raw, "40").startswith("**40 GB**: ")  # typed into the picker
    assert train_tab.verdict_text(raw, "big").startswith("❌ GPU memory: 'big': expected a number of GB")
    assert train_tab.verdict_text({"model": {}}, 24).startswith("❌ form: missing required key")
    job = tmp_path / "runs" / "r" / "jobs" / "train.yaml"
    assert train_tab.command_line(str(tmp_path / "runs" / "r"), "") == f"tuneforge train {job}"
    assert (
        train_tab.command_line(str(tmp_path / "runs" / "r"), " 0, 1")
        == f"CUDA_VISIBLE_DEVICES=0,1 tuneforge train {job}"
    )
    with pytest.raises(UserError, match="^GPUs: 'a,b': expected GPU indices"):
        train_tab.gpu_env("a,b")


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_form_round_trip_keeps_every_example_config(example):
    raw = yaml.safe_load(example.read_text(encoding="utf-8"))
    again = schema.form_to_raw(schema.raw_to_form(raw))
    assert validate(again).model_dump() == validate(raw).model_dump()


def test_form_values_become_typed_config_values():
    values = schema.raw_to_form({})
    by_path = {f.path: i for i, f in enumerate(schema.FIELDS)}
    values[by_path["model.name_or_path"]] = "Qwen/Qwen3-0.6B"
    values[by_path["data.datasets[0].path"]] = "data.jsonl"
    values[by_path["data.datasets[0].placeholders"]] = "{name: Bot}"
    values[by_path["data.datasets[2].path"]] = "more.json"
    values[by_path["method.target_modules"]] = "[q_proj, v_proj]"
    values[by_path["train.max_steps"]] = "30"
    values[by_path["train.save_total_limit"]] = "null"  # typed null: no limit, unlike an empty box (the default)
    values[by_path["train.learning_rate"]] = 2e-4
    values[by_path["output.dir"]] = "runs/x"
    assert schema.form_to_raw(values) == {
        "model": {"name_or_path": "Qwen/Qwen3-0.6B"},
        "data": {"datasets": [{"path": "data.jsonl", "placeholders": {"name": "Bot"}}, {"path": "more.json"}]},
        "method": {"target_modules": ["q_proj", "v_proj"]},
        "train": {"learning_rate": 2e-4, "max_steps": 30, "save_total_limit": None},
        "output": {"dir": "runs/x"},
    }
    values[by_path["method.target_modules"]] = "[q_proj"
    with pytest.raises(UserError, match=r"^method.target_modules: not a YAML value"):
        schema.form_to_raw(values)
    with pytest.raises(UserError, match=r"data.datasets: 4 datasets; the form shows 3"):
        schema.raw_to_form({"data": {"datasets": [{"path": "a"}] * 4}})


def test_credentials_from_flag_or_file_and_loopback(tmp_path):
    assert credentials(None, None) is None
    assert credentials("ann:s3:cret", None) == ("ann", "s3:cret")
    token = tmp_path / "token"
    token.write_text("bob:pw\n")
    assert credentials(None, token) == ("bob", "pw")
    for bad in ("nopass", ":pw", "ann:"):
        with pytest.raises(UserError, match="^--auth: expected USER:PASS"):
            credentials(bad, None)
    with pytest.raises(UserError, match="not both"):
        credentials("a:b", token)
    with pytest.raises(UserError, match="not found"):
        credentials(None, tmp_path / "missing")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_a_non_loopback_address_without_auth_is_warned_about(tmp_path, monkeypatch):
    import gradio as gr

    from tuneforge.webui.app import serve

    launched, warnings = [], []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    serve("0.0.0.0", 7999, tmp_path / "runs", None, warn=warnings.append)
    assert warnings == [
        "warning: the web UI listens on 0.0.0.0 without authentication: anyone who can reach port 7999 can launch "
        "jobs and read your runs; pass --auth USER:PASS or --token-file FILE"
    ]
    assert launched[0]["server_name"] == "0.0.0.0" and launched[0]["auth"] is None
    serve("127.0.0.1", 7999, tmp_path / "runs", None, warn=warnings.append)
    serve("0.0.0.0", 7999, tmp_path / "runs", ("ann", "pw"), warn=warnings.append)
    assert len(warnings) == 1 and launched[2]["auth"] == ("ann", "pw")


STOPPABLE = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: (print("saving", flush=True), sys.exit(130)))
print("ready", flush=True)
time.sleep(60)
"""


def test_runner_records_state_and_passes_on_a_stop(tmp_path):
    status, log = tmp_path / "train.json", tmp_path / "train.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.webui.runner", str(status), str(log), "--", sys.executable, "-c", STOPPABLE]
    )
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    running = json.loads(status.read_text())
    assert running["state"] == "running" and running["pid"] == process.pid and running["command"][-1] == STOPPABLE
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(30) == 130
    ended = json.loads(status.read_text())
    assert (ended["state"], ended["exit_code"], ended["stop_signal"]) == ("stopped", 130, "SIGINT")
    assert log.read_text() == "ready\nsaving\n"
    assert runner.main([str(status), str(log), "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert json.loads(status.read_text())["state"] == "failed"


def test_jobs_launch_a_cli_command_detached_and_read_it_back(tmp_path):
    run = tmp_path / "runs" / "r1"
    state = jobs.launch(run, "train", ["config", "check", str(tmp_path / "missing.yaml")])
    assert state.running or state.state == "failed"
    deadline = time.monotonic() + 120
    while jobs.job_state(run, "train").running:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ended = jobs.job_state(run, "train")
    assert (ended.state, ended.exit_code) == ("failed", 2)
    assert ended.command[1:4] == ("-m", "tuneforge.cli", "config")
    assert jobs.log_tail(run, "train") == f"error: {tmp_path / 'missing.yaml'}: config file not found\n"
    assert jobs.list_runs(tmp_path / "runs") == [run]
    with pytest.raises(UserError, match="no train job is running"):
        jobs.stop(run)
    # A runner killed before it could record the end is reported lost, not running forever.
    (run / "jobs" / "eval.json").write_text(json.dumps({"pid": 2**22 + 1, "command": ["x"], "state": "running"}))
    assert jobs.job_state(run, "eval").state == "lost"


def test_progress_comes_from_the_trainers_status_file_and_buttons_follow_the_job(tmp_path):
    from types import SimpleNamespace

    from tuneforge.train.callbacks import MetricsCallback

    run = tmp_path / "run"
    (run / "jobs").mkdir(parents=True)
    assert jobs.progress(run) is None and watch_tab.progress_html(None) == ""
    callback, state = MetricsCallback(Run(run), resume=None), SimpleNamespace(
        is_world_process_zero=True, global_step=2, max_steps=8, epoch=0.5
    )  # fmt: skip
    callback.on_train_begin(None, state, None)
    assert jobs.progress(run)["step"] == 2 and jobs.progress(run)["eta_s"] is None  # resumed at 2: no pace yet
    callback.started = (callback.started[0] - 30.0, 2)  # 30 s ago at step 2
    state.global_step = 5
    callback.on_step_end(None, state, None)
    written = jobs.progress(run)
    assert (written["step"], written["max_steps"]) == (5, 8) and 29 < written["elapsed_s"] < 40
    assert written["eta_s"] == pytest.approx(written["elapsed_s"] / 3 * 3, abs=0.2)  # 3 steps done, 3 to go
    shown = watch_tab.progress_html(written)
    assert "<progress value='5' max='8'>" in shown and "step 5 / 8 · elapsed 0:00:3" in shown

    (run / "jobs" / "train.log").write_text("loading\rloaded\ntrain: 3/8\n")
    assert jobs.log_tail(run, "train") == "loaded\ntrain: 3/8\n"
    stop, resume = train_tab.buttons(None)
    assert stop.interactive is False and resume.interactive is False  # no run: nothing to stop
    (run / "jobs" / "train.json").write_text(json.dumps({"pid": 1, "command": ["x"], "state": "stopped"}))
    stop, resume = train_tab.buttons(str(run))
    assert stop.interactive is False and resume.interactive is False  # no jobs/train.yaml to resume from
    (run / "jobs" / "train.yaml").write_text("model: {}\n")
    assert train_tab.buttons(str(run))[1].interactive is True
    # Evaluate and Export start once training finished (its summary.json) and while no job of theirs runs.
    assert tools_tab.can_start(str(run), "eval").interactive is False
    (run / "summary.json").write_text("{}")
    assert tools_tab.can_start(str(run), "eval").interactive is True
    assert tools_tab.can_start(None, "export").interactive is False


def test_metrics_are_read_as_appended_and_long_curves_thinned(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    log = run / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert jobs.metrics(run) == [{"step": 1, "loss": 2.0}]
    with log.open("a") as f:
        f.write('ss": 1.5}\n{"step": 3, "loss": 1.0}')  # the torn line completed; a whole JSON without its newline
    assert [e["step"] for e in jobs.metrics(run)] == [1, 2]
    with log.open("a") as f:
        f.write("\n")
    assert jobs.metrics(run) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}]
    fresh = run / "fresh.jsonl"  # output.overwrite: a new run's file in its place, read from its start
    fresh.write_text('{"step": 1, "loss": 9.0}\n')
    fresh.replace(log)
    assert jobs.metrics(run) == [{"step": 1, "loss": 9.0}]

    entries = [{"step": i, "loss": 1 / i} for i in range(1, 2502)] + [{"step": 2501, "eval_loss": 0.5}]
    loss = watch_tab.frames(entries)["loss"]
    train = loss[loss.series == "train"]
    # 2,501 points: every 3rd (834) and the last; the validation series is thinned on its own.
    assert len(train) == 835 and train.step.iloc[0] == 1 and train.step.iloc[-1] == 2501
    assert train.step.is_monotonic_increasing and train.step.iloc[1] == 4
    assert loss[loss.series == "validation"].step.tolist() == [2501]


def finished_run(runs: Path, name: str, learning_rate: float, losses: list[float], heldout: float) -> Path:
    """A run folder as `tuneforge train` and `tuneforge eval` leave it (config, metrics, summary, one eval report)."""
    from tuneforge.config import save_config

    run = runs / name
    (run / "eval" / "quick").mkdir(parents=True)
    raw = {
        "model": {"name_or_path": "Qwen/Qwen3-0.6B"},
        "data": {"datasets": [{"path": "d.json"}]},
        "train": {"learning_rate": learning_rate, "max_steps": len(losses)},
        "output": {"dir": str(run)},
    }
    save_config(validate(raw), run / "config.yaml")
    lines = [{"step": i, "loss": loss} for i, loss in enumerate(losses, 1)] + [
        {"step": len(losses), "eval_loss": heldout}
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = {"steps": len(losses), "train_loss": sum(losses) / len(losses), "tokens_per_s": 100.0, "wall_time_s": 9.0}
    (run / "summary.json").write_text(json.dumps(summary))
    task = {"metrics": {"loss": {"baseline": 3.0, "tuned": heldout}}, "n": 4, "truncated": {}}
    (run / "eval" / "quick" / "results.json").write_text(json.dumps({"tasks": {"heldout-loss": task}}))
    return run


def test_runs_compared_curves_final_metrics_differing_keys_and_eval_reports(tmp_path):
    runs = tmp_path / "runs"
    a = finished_run(runs, "a", 1e-4, [2.0, 1.5, 1.2], heldout=1.4)
    b = finished_run(runs, "b", 3e-4, [2.0, 1.0, 0.7, 0.5], heldout=0.9)
    curves = compare_tab.curves([a, b])
    assert sorted(set(curves.series)) == ["a train", "a validation", "b train", "b validation"]
    assert curves[curves.series == "b train"].value.tolist() == [2.0, 1.0, 0.7, 0.5]
    assert compare_tab.final_metrics([a, b]) == [
        ["a", "3", "1.567", "1.4", "100", "9"], ["b", "4", "1.05", "0.9", "100", "9"]
    ]  # fmt: skip
    # Only the keys that differ (output.dir always does, and says nothing).
    assert compare_tab.config_diff([a, b]) == [
        ["train.learning_rate", "0.0001", "0.0003"],
        ["train.max_steps", "3", "4"],
    ]
    assert compare_tab.eval_table([a, b]) == [["quick", "heldout-loss", "loss", "3.0000 → 1.4000", "3.0000 → 0.9000"]]
    log = watch_tab.stepped(curves, log=True)
    assert log["value"].value.iloc[0] == pytest.approx(math.log10(2.0)) and log["x_lim"] == [0, 30]


def tiny_config_text(model_dir: Path, tmp_path: Path) -> str:
    """The YAML of a 6-step LoRA run of the tiny Qwen3 on 16 alpaca samples (what the browser test types in)."""
    return schema.dump_yaml(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {
                "datasets": [{"path": str(DATA_DIR / "alpaca_en_demo.json"), "max_samples": 16}],
                "max_length": 256,
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {"max_steps": 6, "per_device_batch_size": 4, "logging_steps": 1, "save_steps": 3},
            "output": {"dir": str(tmp_path / "runs" / "r")},
        }
    )


@needs_assets
def test_preview_marks_the_trained_tokens_and_estimate_counts_the_steps(tiny_qwen3_dir, tmp_path):
    from tuneforge.webui.train_tab import config_from_yaml, estimate_text, preview_html

    text = tiny_config_text(tiny_qwen3_dir, tmp_path)
    shown = preview_html(text)
    assert shown.count("<h4>sample ") == 3
    # The prompt (with Qwen3's empty think block) is not trained; the answer through <|im_end|> is.
    first = shown.split("<h4>sample 1")[0]
    assert '<span class="prompt">&lt;|im_start|&gt;user\n' in first
    assert '&lt;think&gt;\n\n&lt;/think&gt;\n\n</span><span class="trained">' in first
    assert "&lt;|im_end|&gt;</span>" in first.split('<span class="trained">')[1]
    report = estimate_text(text, cpu=True)
    assert "1 process(es) on CPU" in report and "total" in report
    assert "optimizer steps per epoch, 6 in total" in report.replace("\n", " ")
    with pytest.raises(UserError, match="^YAML editor: train.max_steps: "):
        config_from_yaml(text.replace("max_steps: 6", "max_steps: 0"))
    # Located by config.py's one reader: the flow list opened on line 3 meets a block entry on line 5.
    with pytest.raises(UserError, match=r"^YAML editor:5: invalid YAML \(expected the node content, but found '-'\)"):
        config_from_yaml(text.replace("data:", "data: [", 1))


@needs_assets
def test_preview_of_the_shipped_dpo_example_shows_both_answers_of_each_pair(tiny_qwen3_dir, tmp_path):
    """Issue 22: Preview prepared every config as sft, so it refused each preference config."""
    from tuneforge.webui.train_tab import preview_html

    raw = yaml.safe_load((ROOT / "examples" / "qwen3-8b-dpo-lora.yaml").read_text(encoding="utf-8"))
    raw["model"]["name_or_path"] = str(tiny_qwen3_dir)
    # The example's hub set in its layout (the local demo file is its 300-pair excerpt), no SFT run to continue.
    raw["data"]["datasets"] = [{"path": str(DATA_DIR / "dpo_en_demo.json"), "format": "ranking", "max_samples": 40}]
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    del raw["method"]["adapter"]
    shown = preview_html(schema.dump_yaml(raw))
    blocks = shown.split("<h4>sample ")[1:]
    assert [b.split(":")[0] for b in blocks] == [f"{i} {side}" for i in range(3) for side in ("chosen", "rejected")]
    for chosen, rejected in zip(blocks[::2], blocks[1::2]):
        # Both answers follow the same untrained prompt; each is trained through its end-of-turn marker.
        prompt = chosen.split('<span class="trained">')[0].split("<pre class='sample'>")[1]
        assert prompt.startswith('<span class="prompt">&lt;|im_start|&gt;user\n')
        assert rejected.split("<pre class='sample'>")[1].startswith(prompt)
        for block in chosen, rejected:
            assert block.split('<span class="trained">')[1].split("</span>")[0].endswith("&lt;|im_end|&gt;")


@needs_assets
def test_a_grpo_reward_from_a_file_is_refused_from_the_browser(tiny_qwen3_dir, tmp_path):
    from tuneforge.webui.train_tab import config_from_yaml

    raw = yaml.safe_load(tiny_config_text(tiny_qwen3_dir, tmp_path))
    raw["method"] = {"objective": "grpo", "grpo": {"num_generations": 4, "rewards": [{"name": "format"}]}}
    assert config_from_yaml(schema.dump_yaml(raw)).method.grpo.rewards[0].name == "format"
    raw["method"]["grpo"]["rewards"].append({"name": "my_rewards.py:brevity"})
    with pytest.raises(UserError, match=r"^method.grpo.rewards.1.name: my_rewards.py:brevity runs that file's code"):
        config_from_yaml(schema.dump_yaml(raw))
    # The form leaves the reward list to the YAML editor (it shows every other key).
    assert not [f for f in schema.FIELDS if f.path.startswith("method.grpo.rewards")]
    assert "method.grpo.num_generations" in [f.path for f in schema.FIELDS]


# --- a served UI: authentication, and the browser end to end -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(runs: Path, port: int, log: Path, *flags: str) -> subprocess.Popen:
    """`tuneforge webui` as a subprocess, once its page answers."""
    import httpx

    out = log.open("a")
    # HOME in the test's folder: the jobs' tokenized-data cache (~/.cache/tuneforge/data) stays there.
    home = log.parent / "home"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "webui", "--port", str(port), "--runs-dir", str(runs), *flags],
        stdout=out,
        stderr=out,
        env={**os.environ, "HOME": str(home)},
    )
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the web UI did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)


def stop_ui(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_with_auth_no_route_answers_without_credentials(tmp_path):
    import httpx

    runs = tmp_path / "runs"
    secret = runs / "r1" / "loss.png"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"\x89PNG secret curve")
    (runs / "r1" / "config.yaml").write_text("model: {name_or_path: x}\n")
    port = free_port()
    server = start_ui(runs, port, tmp_path / "ui.log", "--auth", "ann:pw")
    base = f"http://127.0.0.1:{port}"
    try:
        page = httpx.get(base + "/")
        # Gradio answers / with its login page: no component, no endpoint, no path of this machine in it.
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        for leak in ("name_or_path", str(runs), "form_changed", "tuneforge ·"):
            assert leak not in page.text, leak
        routes = [
            ("GET", "/config"),
            ("GET", "/gradio_api/info"),
            ("GET", f"/gradio_api/file={secret}"),
            ("GET", "/gradio_api/queue/status"),
            ("POST", "/gradio_api/queue/join"),
            ("POST", "/gradio_api/upload"),
            ("GET", "/gradio_api/queue/data?session_hash=x"),
            ("POST", "/gradio_api/run/predict"),
        ]
        for method, route in routes:
            answer = httpx.request(method, base + route, json={}, follow_redirects=False)
            assert answer.status_code in (401, 403), (route, answer.status_code, answer.text[:200])
            assert b"secret curve" not in answer.content
        assert httpx.post(base + "/login", data={"username": "ann", "password": "nope"}).status_code == 400
        with httpx.Client(base_url=base) as client:  # the same routes answer once logged in
            assert client.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
            assert client.get("/config").status_code == 200
            assert client.get(f"/gradio_api/file={secret}").content == b"\x89PNG secret curve"
    finally:
        stop_ui(server)


def _line_points(page, plot: str) -> int:
    """Points on the first line a LinePlot draws (0 before it draws one with a visible stroke)."""
    line = page.locator(f"#{plot} svg [aria-roledescription='line mark'][stroke]").first
    if line.count() == 0:
        return 0
    return (line.get_attribute("d") or "").count("L") + 1


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _browser(sync_api):
    """Playwright's Chromium: Debian's (a skip with the reason where it cannot run)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh test does)")
    playwright = sync_api.sync_playwright().start()
    return playwright, playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])


TABS = {
    "train": ("Train", "训练"),
    "watch": ("Watch", "监控"),
    "compare": ("Compare", "对比"),
    "chat": ("Chat", "对话"),
    "evaluate": ("Evaluate", "评估"),
    "export": ("Export", "导出"),
    "data": ("Data", "数据"),
}
ESSENTIAL_IDS = ("preset", "name", "gpu-size", *(elem_id(path) for path in ESSENTIALS), "verdict", "launch", "stop")


def _choose(page, component: str, option: str) -> None:
    """Pick `option` (its shown text, or a part of it) in a dropdown: one interaction, as a user clicks it."""
    page.locator(f"#{component} input").first.click()
    page.get_by_role("option", name=option).first.click()


def _screenshots(page, language: int, tabs: list[str]) -> None:
    """Every tab of the page, as ARTIFACTS/webui/LANG-TAB.png."""
    for tab in tabs:
        page.get_by_role("tab", name=TABS[tab][language]).click()
        page.wait_for_timeout(2500)  # a refresh of the tab's timers
        page.screenshot(path=str(ARTIFACTS / f"{('en', 'zh')[language]}-{tab}.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 6 min on a quiet machine; 2 cores shared by many jobs take three times that
@needs_assets
def test_browser_preset_pickers_launch_watch_stop_resume_restart_chat_evaluate_export(tmp_path):
    """From the first screen: the self-cognition preset, a local tiny model and a data file from the pickers, launch
    (at most 8 interactions before it), watch the curve grow, stop and resume, restart the UI, chat, evaluate, export;
    the essentials fit a 1280x800 window unscrolled; screenshots of every tab in English and Chinese."""
    from conftest import make_tiny_qwen3

    from tuneforge.demo import write_data

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    models, data, runs, port = tmp_path / "models", tmp_path / "data", tmp_path / "runs", free_port()
    make_tiny_qwen3(models / "tiny-qwen3")
    write_data(data)
    log = tmp_path / "ui.log"
    folders = ["--models-dir", str(models), "--data-dir", str(data), "--examples-dir", str(ROOT / "examples")]
    run = runs / "qwen3-8b-lora"  # the preset's output name
    playwright, browser = _browser(sync_api)
    server = start_ui(runs, port, log, *folders)
    try:
        page = browser.new_page(locale="en-US", viewport={"width": 1280, "height": 800})
        page.set_default_timeout(120_000)  # page loads and clicks on a machine shared by many jobs
        page.goto(f"http://127.0.0.1:{port}/")
        sync_api.expect(page.locator("#launch")).to_be_visible(timeout=60_000)
        for essential in ESSENTIAL_IDS:  # the first screen holds them all, unscrolled
            box = page.locator(f"#{essential}").bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800, (essential, box)
        sync_api.expect(page.locator("#stop")).to_be_disabled()  # no job: nothing to stop
        sync_api.expect(page.locator("#resume")).to_be_disabled()

        editor = page.locator("#yaml .cm-content")

        def typed(key: str, value: str) -> None:  # as a user types: Gradio's `input` fires on keys, not on fill()
            page.locator(f"#{elem_id(key)} input").click()
            page.keyboard.press("Control+A")
            page.keyboard.type(value)

        def in_yaml(text: str):
            return lambda: sync_api.expect(editor).to_contain_text(text, timeout=60_000)

        logging_steps = page.locator(f"#{elem_id('train.logging_steps')} input")
        # (interaction, what the page shows once it is handled): a user sees the form follow before going on.
        interactions = [
            (
                lambda: _choose(page, "preset", "Self-cognition LoRA"),
                lambda: sync_api.expect(page.locator("#name input")).to_have_value("qwen3-8b-lora", timeout=120_000),
            ),
            (
                lambda: _choose(page, elem_id("model.name_or_path"), "tiny-qwen3"),
                in_yaml(f"name_or_path: {models / 'tiny-qwen3'}"),
            ),
            (
                lambda: _choose(page, elem_id("data.datasets[0].path"), "self_cognition.json"),
                in_yaml(f"path: {data / 'self_cognition.json'}"),
            ),
            # 10 epochs of 38 records at 4 a step, no accumulation: 100 steps (about 17 s on 2 cores), so the run
            # is still in its middle once the curve has grown and the test stops it (the preset's 30 steps took 5 s,
            # and CI's run once finished before the stop reached it).
            (
                lambda: typed("train.gradient_accumulation", "1"),  # the default: the key leaves the YAML
                lambda: sync_api.expect(editor).not_to_contain_text("gradient_accumulation", timeout=60_000),
            ),
            (lambda: typed("train.epochs", "10"), in_yaml("epochs: 10")),
            (lambda: typed("train.learning_rate", "0.01"), in_yaml("learning_rate: 0.01")),
            (
                lambda: page.locator("#group-logging .label-wrap").first.click(),
                lambda: sync_api.expect(logging_steps).to_be_visible(),
            ),
            (lambda: typed("train.logging_steps", "1"), in_yaml("logging_steps: 1")),
        ]
        assert len(interactions) <= 8
        for interact, shown in interactions:
            interact()
            shown()
        editor = page.locator("#yaml .cm-content")
        sync_api.expect(editor).to_contain_text("logging_steps: 1", timeout=30_000)
        text = editor.inner_text()
        assert f"name_or_path: {models / 'tiny-qwen3'}" in text and f"path: {data / 'self_cognition.json'}" in text
        assert "gradient_accumulation" not in text and f"dir: {run}" in text and "placeholders:" in text
        sync_api.expect(page.locator("#dataset-info")).to_contain_text("40 records · format alpaca", timeout=60_000)
        sync_api.expect(page.locator("#verdict")).to_contain_text("fits on 24 GB", timeout=30_000)
        sync_api.expect(page.locator("#command")).to_contain_text(f"tuneforge train {run / 'jobs' / 'train.yaml'}")
        page.screenshot(path=str(ARTIFACTS / "train-first-screen.png"))

        page.locator("#launch").click()
        sync_api.expect(page.locator("#train-message")).to_contain_text("training started", timeout=60_000)
        written = yaml.safe_load((run / "jobs" / "train.yaml").read_text(encoding="utf-8"))
        assert written == yaml.safe_load(text) and written["train"]["logging_steps"] == 1
        sync_api.expect(page.locator("#stop")).to_be_enabled(timeout=10_000)
        page.get_by_role("tab", name="Watch").click()
        _wait("the loss curve's first points", lambda: _line_points(page, "plot-loss") >= 2, 300)
        first = _line_points(page, "plot-loss")
        _wait("the loss curve to grow", lambda: _line_points(page, "plot-loss") > first, 300)
        # Stop: SIGINT, so training saves a checkpoint where it is and exits 130; Resume continues from it.
        # The training process is frozen from here until the stop is sent, so that on a fast machine the run cannot
        # reach its last step before the signal (it would then finish, exit 0, and not be "stopped").
        trainer = psutil.Process(json.loads(Run(run).job_status("train").read_text(encoding="utf-8"))["child"])
        trainer.suspend()
        try:
            sync_api.expect(page.locator("#watch-progress progress")).to_have_attribute("max", re.compile(r"^\d+$"))
            sync_api.expect(page.locator("#watch-progress")).to_contain_text("ETA")
            page.get_by_role("tab", name="Train").click()
            page.locator("#stop").click()
            sync_api.expect(page.locator("#train-message")).to_contain_text("stop sent", timeout=30_000)
        finally:
            trainer.resume()
        _wait("the job to end", lambda: not jobs.job_state(run, "train").running, 120)
        ended = jobs.job_state(run, "train")
        assert (ended.state, ended.exit_code) == ("stopped", 130), jobs.log_tail(run, "train")
        assert "train.resume=auto" in jobs.log_tail(run, "train")  # the CLI's resume hint
        stopped_at = Run(run).latest_checkpoint()
        total = jobs.progress(run)["max_steps"]
        assert stopped_at is not None and int(stopped_at.name.split("-")[1]) < total
        sync_api.expect(page.locator("#stop")).to_be_disabled(timeout=10_000)
        page.locator("#resume").click()
        sync_api.expect(page.locator("#train-message")).to_contain_text("resumed", timeout=60_000)

        # Restart the UI while the job runs: the job is not its child, and the new UI finds the run and its curve.
        stop_ui(server)
        assert jobs.job_state(run, "train").running
        server = start_ui(runs, port, log, *folders)
        page.goto(f"http://127.0.0.1:{port}/")  # a new page load (reload() races the page's own reconnect)
        page.get_by_role("tab", name="Watch").click()
        sync_api.expect(page.locator("#watch-status")).to_contain_text(f"{run.name}: finished", timeout=300_000)
        _wait("the whole curve after the restart", lambda: _line_points(page, "plot-loss") == total, 60)
        assert [e["step"] for e in jobs.metrics(run) if "loss" in e] == list(range(1, total + 1))
        summary = json.loads(Run(run).summary.read_text())
        assert summary["steps"] == total and summary["resumed_from"] == str(stopped_at)

        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-prompt textarea").fill("Who are you?")
        page.locator("#chat-send").click()
        for side in ("base", "tuned"):
            answer = page.locator(f"#chat-{side} [data-testid=bot]").last
            sync_api.expect(answer).not_to_be_empty(timeout=300_000)

        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#eval-tasks").locator("input, textarea").fill("heldout-loss")
        page.locator("#eval-start").click()
        sync_api.expect(page.locator("#eval-status")).to_contain_text("eval: finished", timeout=300_000)
        sync_api.expect(page.locator("#eval-table")).to_contain_text("heldout-loss", timeout=30_000)
        report = json.loads((run / "eval" / "heldout-loss" / "results.json").read_text())
        loss = report["tasks"]["heldout-loss"]["metrics"]["loss"]
        assert report["tasks"]["heldout-loss"]["n"] == 2 and loss["tuned"] < loss["baseline"]

        page.get_by_role("tab", name="Export").click()
        _choose(page, "export-type", "f16")  # the default is the CLI's (q4_k_m); f16 needs no llama.cpp
        page.locator("#export-start").click()
        sync_api.expect(page.locator("#export-status")).to_contain_text("export: finished", timeout=600_000)
        outputs = page.locator("#export-outputs textarea").input_value()
        assert f"gguf/{run.name}-f16.gguf" in outputs and "merged/model.safetensors" in outputs
        assert Run(run).gguf("f16").read_bytes()[:4] == b"GGUF"
        _choose(page, "run", run.name)
        _screenshots(page, 0, list(TABS))

        chinese = browser.new_page(locale="zh-CN", viewport={"width": 1280, "height": 800})  # the browser's language
        chinese.set_default_timeout(120_000)
        chinese.goto(f"http://127.0.0.1:{port}/")
        sync_api.expect(chinese.locator("#launch")).to_have_text("开始训练", timeout=60_000)
        assert [tab.inner_text() for tab in chinese.get_by_role("tab").all()] == [zh for _, zh in TABS.values()]
        sync_api.expect(chinese.locator("#preset")).to_contain_text("从这里开始")
        _screenshots(chinese, 1, list(TABS))
    finally:
        browser.close()
        playwright.stop()
        stop_ui(server)
        for kind in jobs.KINDS:  # a failed test leaves no job running (the runner leads its job's process group)
            if jobs.job_state(run, kind).running:
                os.killpg(jobs.job_state(run, kind).pid, signal.SIGKILL)


@pytest.mark.slow
def test_browser_compares_two_finished_runs(tmp_path):
    """Two finished runs picked on the Compare tab: both curves drawn, the differing keys listed, both eval reports
    in one table (in English and in Chinese)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs, port = tmp_path / "runs", free_port()
    finished_run(runs, "lr-1e-4", 1e-4, [2.0 - 0.02 * i for i in range(40)], heldout=1.4)
    finished_run(runs, "lr-3e-4", 3e-4, [2.0 - 0.04 * i for i in range(36)], heldout=0.9)
    playwright, browser = _browser(sync_api)
    server = start_ui(runs, port, tmp_path / "ui.log")
    try:
        for language, locale in enumerate(("en-US", "zh-CN")):
            page = browser.new_page(locale=locale, viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name=TABS["compare"][language]).click()
            for name in ("lr-1e-4", "lr-3e-4"):
                _choose(page, "compare-runs", name)
            page.keyboard.press("Escape")  # a multiselect stays open
            lines = page.locator("#compare-loss svg [aria-roledescription='line mark'][stroke]")

            def drawn() -> list[int]:
                return sorted((line.get_attribute("d") or "").count("L") + 1 for line in lines.all())  # noqa: B023

            # Each run's training curve, 40 and 36 steps, each with its own colour (and its one validation point).
            _wait("both runs' curves", lambda: drawn()[-2:] == [36, 40], 60)
            assert len({line.get_attribute("stroke") for line in lines.all()}) == 4
            diff = page.locator("#compare-diff")
            sync_api.expect(diff).to_contain_text("train.learning_rate")
            sync_api.expect(diff).to_contain_text("train.max_steps")
            assert "model.name_or_path" not in diff.inner_text()  # the same in both: not listed
            table = page.locator("#compare-eval")
            sync_api.expect(table).to_contain_text("3.0000 → 1.4000")
            sync_api.expect(table).to_contain_text("3.0000 → 0.9000")
            page.screenshot(path=str(ARTIFACTS / f"{('en', 'zh')[language]}-compare-two-runs.png"), full_page=True)
    finally:
        browser.close()
        playwright.stop()
        stop_ui(server)
