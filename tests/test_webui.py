"""The web UI: the form reaches every config key, jobs live in their run folder, auth guards every route, and the
whole flow (configure, launch, watch, restart, chat, export) works in a real headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, ROOT, needs_assets

pytest.importorskip("gradio", reason="the [webui] extra (gradio) is not installed")

from tuneforge.config import validate  # noqa: E402
from tuneforge.config_reference import keys  # noqa: E402
from tuneforge.errors import UserError  # noqa: E402
from tuneforge.webui import jobs, runner, schema, watch_tab  # noqa: E402
from tuneforge.webui.app import credentials, is_loopback  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TUNEFORGE_ARTIFACTS", ROOT / "tests" / "artifacts")) / "webui"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The page built over an empty runs folder, and its component per config key."""
    from tuneforge.webui.app import build_app

    return build_app(tmp_path_factory.mktemp("runs"))


def test_every_config_key_has_an_editable_component_with_its_description(ui):
    from tuneforge.webui.train_tab import elem_id

    page, fields = ui
    rows, _ = keys()
    assert len(rows) > 70
    rows = [k for k in rows if not k.path.startswith("method.grpo.rewards[]")]  # a list the YAML editor edits
    for key in rows:
        path = key.path.replace("[]", "[0]")  # data.datasets[] entries: the form's first dataset slot
        component = fields[path]
        assert component.interactive is True, path
        assert component.label == path and component.info == key.description, path
        assert component.elem_id == elem_id(path)
        assert component in page.blocks.values(), path
    # Nothing in the form that the schema does not have: datasets slots aside, the two key sets are equal.
    first_slot = {p for p in fields if not p.startswith(("data.datasets[1]", "data.datasets[2]"))}
    assert first_slot == {k.path.replace("[]", "[0]") for k in rows}


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


def test_progress_and_log_tail_read_the_train_bar(tmp_path):
    run = tmp_path / "run"
    (run / "jobs").mkdir(parents=True)
    bar = "train:  25%|██▌       | 2/8 [00:09<00:28,  4.74s/step, loss=13.0643]"
    (run / "jobs" / "train.log").write_text(f"loading\n{bar}\rtrain:  38%|███▊      | 3/8 [00:15<00:26,  5.22s/step]\n")
    assert jobs.progress(run) == (3, 8, "00:15", "00:26")
    assert jobs.log_tail(run, "train") == "loading\ntrain:  38%|███▊      | 3/8 [00:15<00:26,  5.22s/step]\n"
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert jobs.metrics(run) == [{"step": 1, "loss": 2.0}]


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
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "webui", "--port", str(port), "--runs-dir", str(runs), *flags],
        stdout=out,
        stderr=out,
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


STEPS = 40  # the browser test's training length


def _line_points(page, plot: str) -> int:
    """Points on the first line a LinePlot draws (0 before it draws one with a visible stroke)."""
    line = page.locator(f"#plot-{plot} svg [aria-roledescription='line mark'][stroke]").first
    if line.count() == 0:
        return 0
    return (line.get_attribute("d") or "").count("L") + 1


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
@needs_assets
def test_browser_end_to_end_train_watch_restart_chat_evaluate_export(tiny_qwen3_dir, tmp_path):
    """Fill the form, launch, watch the curve grow, restart the UI and find the run again, chat, evaluate, export."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh test does)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs, port = tmp_path / "runs", free_port()
    log = tmp_path / "ui.log"
    server = start_ui(runs, port, log)
    # 40 steps of a 2-layer Qwen3 with the real tokenizer, a checkpoint every 3: long enough on a quiet machine for
    # the page (refreshed every 2 s) to see the curve grow and for the stop to land before the end (8 steps once ran
    # out in one refresh on a clean CI clone).
    form = {
        "model-name_or_path": tiny_qwen3_dir,
        "data-datasets-0-path": DATA_DIR / "alpaca_en_demo.json",
        "data-datasets-0-max_samples": 16,
        "data-max_length": 256,
        "data-val_size": 0.25,  # held out: what the Evaluate tab's heldout-loss task reads
        "data-cache_dir": tmp_path / "cache",
        "train-max_steps": STEPS,
        "train-learning_rate": 0.01,
        "train-per_device_batch_size": 4,
        "train-logging_steps": 1,
        "train-save_steps": 3,
        "output-dir": runs / "e2e",
    }
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            for key, value in form.items():  # typed as a user types: Gradio's `input` fires on keys, not on fill()
                page.locator(f"#cfg-{key} input").click()
                page.keyboard.press("Control+A")
                page.keyboard.type(str(value))
            editor = page.locator("#yaml .cm-content")
            sync_api.expect(editor).to_contain_text(f"dir: {runs / 'e2e'}", timeout=30_000)
            text = editor.inner_text()
            assert f"max_steps: {STEPS}" in text and "logging_steps: 1" in text and "max_samples: 16" in text
            page.screenshot(path=str(ARTIFACTS / "train.png"))

            page.locator("#launch").click()
            sync_api.expect(page.locator("#train-message")).to_contain_text("training started", timeout=60_000)
            written = yaml.safe_load((runs / "e2e" / "jobs" / "train.yaml").read_text(encoding="utf-8"))
            assert written == yaml.safe_load(text) and written["train"]["max_steps"] == STEPS
            page.get_by_role("tab", name="Watch").click()
            _wait("the loss curve's first points", lambda: _line_points(page, "loss") >= 2, 300)
            first = _line_points(page, "loss")
            _wait("the loss curve to grow", lambda: _line_points(page, "loss") > first, 300)
            page.screenshot(path=str(ARTIFACTS / "watch.png"))

            # Stop: SIGINT, so training saves a checkpoint where it is and exits 130; Resume continues from it.
            page.get_by_role("tab", name="Train").click()
            page.locator("#stop").click()
            sync_api.expect(page.locator("#train-message")).to_contain_text("stop sent", timeout=30_000)
            _wait("the stop", lambda: jobs.job_state(runs / "e2e", "train").state == "stopped", 120)
            assert jobs.job_state(runs / "e2e", "train").exit_code == 130
            assert "train.resume=auto" in jobs.log_tail(runs / "e2e", "train")  # the CLI's resume hint
            stopped_at = max(int(p.name.split("-")[1]) for p in (runs / "e2e" / "checkpoints").glob("checkpoint-*"))
            assert stopped_at < STEPS
            page.locator("#resume").click()
            sync_api.expect(page.locator("#train-message")).to_contain_text("resumed", timeout=60_000)

            # Restart the UI while the job runs: the job is not its child, and the new UI finds the run and its curve.
            stop_ui(server)
            assert jobs.job_state(runs / "e2e", "train").running
            server = start_ui(runs, port, log)
            page.goto(f"http://127.0.0.1:{port}/")  # a new page load (reload() races the page's own reconnect)
            page.get_by_role("tab", name="Watch").click()
            sync_api.expect(page.locator("#watch-status")).to_contain_text("e2e: finished", timeout=300_000)
            _wait("the whole curve after the restart", lambda: _line_points(page, "loss") == STEPS, 60)
            assert [e["step"] for e in jobs.metrics(runs / "e2e") if "loss" in e] == list(range(1, STEPS + 1))
            summary = json.loads((runs / "e2e" / "summary.json").read_text())
            assert summary["steps"] == STEPS and summary["resumed_from"].endswith(f"checkpoint-{stopped_at}")

            page.get_by_role("tab", name="Chat").click()
            page.locator("#chat-prompt textarea").fill("Who are you?")
            page.locator("#chat-send").click()
            for side in ("base", "tuned"):
                answer = page.locator(f"#chat-{side} [data-testid=bot]").last
                sync_api.expect(answer).not_to_be_empty(timeout=300_000)
            page.screenshot(path=str(ARTIFACTS / "chat.png"))

            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#eval-tasks").locator("input, textarea").fill("heldout-loss")
            page.locator("#eval-start").click()
            sync_api.expect(page.locator("#eval-status")).to_contain_text("eval: finished", timeout=300_000)
            sync_api.expect(page.locator("#eval-table")).to_contain_text("heldout-loss", timeout=30_000)
            report = json.loads((runs / "e2e" / "eval" / "heldout-loss" / "results.json").read_text())
            loss = report["tasks"]["heldout-loss"]["metrics"]["loss"]
            assert report["tasks"]["heldout-loss"]["n"] == 4 and loss["tuned"] < loss["baseline"]
            page.screenshot(path=str(ARTIFACTS / "evaluate.png"))

            page.get_by_role("tab", name="Export").click()
            page.locator("#export-start").click()
            status = page.locator("#export-status")
            sync_api.expect(status).to_contain_text("export: finished", timeout=600_000)
            outputs = page.locator("#export-outputs textarea").input_value()
            assert "gguf/e2e-f16.gguf" in outputs and "merged/model.safetensors" in outputs
            assert (runs / "e2e" / "gguf" / "e2e-f16.gguf").read_bytes()[:4] == b"GGUF"
            page.screenshot(path=str(ARTIFACTS / "export.png"))
            chinese = browser.new_page(locale="zh-CN")  # the language follows the browser's
            chinese.goto(f"http://127.0.0.1:{port}/")
            sync_api.expect(chinese.locator("#launch")).to_have_text("开始训练", timeout=60_000)
            assert [tab.inner_text() for tab in chinese.get_by_role("tab").all()] == [
                "训练",
                "监控",
                "对话",
                "评估",
                "导出",
            ]
            browser.close()
    finally:
        stop_ui(server)
