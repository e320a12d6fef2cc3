"""The Data tab (synth jobs, their progress file, review and export, in a real Chromium) and the Watch tab's GRPO
rewards chart from a metrics.jsonl as TRL writes it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from synth_server import ScriptedServer

pytest.importorskip("gradio", reason="the [webui] extra (gradio) is not installed")

from tuneforge.errors import UserError  # noqa: E402
from tuneforge.synth import review  # noqa: E402
from tuneforge.synth.config import validate_synth  # noqa: E402
from tuneforge.synth.run import synth  # noqa: E402
from tuneforge.webui import data_tab, jobs, watch_tab  # noqa: E402

HERE = Path(__file__).resolve().parent
GRPO_METRICS = HERE / "data" / "grpo_metrics.jsonl"  # 3 steps of a tiny GRPO run (accuracy + length rewards)


def test_rewards_chart_has_each_reward_kl_and_completion_length_only_for_grpo():
    entries = [json.loads(line) for line in GRPO_METRICS.read_text().splitlines()]
    shown = watch_tab.frames(entries)
    rewards = shown["rewards"]
    series = {name: list(group.value) for name, group in rewards.groupby("series")}
    assert series == {
        "accuracy": [0.0] * 3,
        "accuracy std": [0.0] * 3,
        "length": [-1.0] * 3,
        "length std": [0.0] * 3,
        "total": [-0.5] * 3,  # TRL's `reward`: the weighted sum (length weighs 0.5)
    }
    assert list(rewards[rewards.series == "length"].step) == [1, 2, 3]
    assert {n: list(g.value) for n, g in shown["kl"].groupby("series")} == {"KL": [0.0] * 3}
    lengths = {n: list(g.value) for n, g in shown["completion_length"].groupby("series")}
    assert lengths == {"mean": [8.0] * 3, "max": [8.0] * 3}
    assert list(shown["loss"].step) == [1, 2, 3]  # the usual curves as before
    # An SFT run's entries: no GRPO plot has a point, so the row stays hidden.
    sft = [{"step": 1, "loss": 2.0, "learning_rate": 1e-4}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    shown = watch_tab.frames(sft)
    assert all(shown[plot] is None for plot in watch_tab.GRPO_PLOTS)
    assert list(shown["loss"].value) == [2.0, 1.5, 1.7]


def _docs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "visitors.md").write_text(
        "# Visitors\n\nVisitors sign in at the front desk. They are escorted at all times by a member of staff. "
        "Badges are returned at the gate before leaving. Photography inside the plant needs written permission. "
        "Lost badges are reported to security within the hour. Contractors follow the same rules as visitors.\n",
        encoding="utf-8",
    )
    filters = (
        "# 维护\n\n过滤器每年春天更换一次。更换后要记录日期和操作人员的名字。"
        "旧过滤器交给回收站处理。检查记录保存五年。\n"
    )
    (folder / "filters.md").write_text(filters, encoding="utf-8")
    return folder


def _synth_config(url: str, docs: Path, out: Path) -> dict:
    return {"docs": str(docs), "out": str(out), "model": {"endpoint": url, "name": "scripted"},
            "generate": {"questions_per_chunk": 3}, "output": {"eval_fraction": 0.0}}  # fmt: skip


def test_synth_writes_its_progress_file_with_the_reports_counts(tmp_path):
    out = tmp_path / "out"
    with ScriptedServer(faults=False) as server:
        report = synth(validate_synth(_synth_config(server.url, _docs(tmp_path / "docs"), out), "t"), "k", log=print)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["stage"] == "done"
    assert (progress["documents"], progress["chunks"], progress["pairs_requested"]) == (2, 2, 6)
    assert progress["requests_planned"] == 2 + 6 + 6  # questions per chunk, then an answer and a judge per pair
    sent = report["requests"]["sent"]
    assert progress["requests_sent"] == sent == len(server.ledger.delivered) and progress["from_journal"] == 0
    assert progress["tokens_in"] == report["tokens"]["in"] and progress["in_flight"] == 0


def test_review_edits_decisions_and_export_in_the_alpaca_layout_keep_the_reasoning(tmp_path):
    def alpaca(question: str, output: str, chunk: str) -> dict:
        return {"instruction": question, "input": "", "output": output, "provenance": {"chunk_id": chunk}}

    records = [
        alpaca("Who signs in?", "<think>\nThe text says visitors.\n</think>\n\nVisitors.", "c1"),
        alpaca("Where?", "At the front desk.", "c1"),
        alpaca("过滤器多久更换？", "每年春天。", "c2"),
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    items = review.load(tmp_path)
    assert [(i.question, i.reasoning, i.answer, i.status) for i in items][0] == (
        "Who signs in?", "The text says visitors.", "Visitors.", "pending"
    )  # fmt: skip
    first, second, third = (item.id for item in items)
    review.decide(tmp_path, first, "accepted", "Who signs in first?", "Visitors do.")
    review.decide(tmp_path, second, "rejected", "Where?", "At the front desk.")  # unchanged text: no edit recorded
    review.decide(tmp_path, first, "accepted")  # a decision alone keeps the earlier edit
    assert json.loads((tmp_path / "review.json").read_text())["pairs"] == {
        first: {"question": "Who signs in first?", "answer": "Visitors do.", "status": "accepted"},
        second: {"status": "rejected"},
    }
    assert review.accept_rest(tmp_path) == 1
    path, count = review.export(tmp_path)
    edited = alpaca("Who signs in first?", "<think>\nThe text says visitors.\n</think>\n\nVisitors do.", "c1")
    edited["provenance"]["edited"] = True
    assert count == 2 and [json.loads(line) for line in path.read_text().splitlines()] == [edited, records[2]]
    assert review.export(tmp_path)[0].read_bytes() == path.read_bytes()  # a re-export gives the same file
    assert [i.id for i in review.load(tmp_path)] == [first, second, third]  # ids: chunk and generated question
    with pytest.raises(UserError, match="no pair nope"):
        review.decide(tmp_path, "nope", "accepted")


def test_the_form_never_puts_a_key_in_the_config_and_refuses_a_typed_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret")
    raw = data_tab.synth_config(tmp_path, "docs", "http://h:8000", "m", "MY_KEY", "", "manuals", 4)
    assert raw == {
        "docs": "docs",
        "out": str(tmp_path.resolve() / "synth" / "manuals"),
        "model": {"endpoint": "http://h:8000", "name": "m", "api_key_env": "MY_KEY"},
        "generate": {"questions_per_chunk": 4},
    }
    with pytest.raises(UserError, match="type the variable's name"):
        data_tab.synth_config(tmp_path, "docs", "http://h:8000", "m", "sk-secret", "", "manuals", None)
    with pytest.raises(UserError, match="one folder name"):
        data_tab.synth_config(tmp_path, "docs", "http://h:8000", "m", "", "", "../elsewhere", None)
    with pytest.raises(UserError, match="API key file: key.txt: not found"):
        data_tab.synth_config(tmp_path, "docs", "http://h:8000", "m", "", "key.txt", "manuals", None)
    with pytest.raises(UserError, match="generate.questions_per_chunk"):  # synth's own schema
        data_tab.synth_config(tmp_path, "docs", "http://h:8000", "m", "", "", "manuals", 0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_browser_synth_job_survives_a_restart_then_review_and_export(tmp_path):
    """From the Data tab: a synth job against the scripted server, the UI restarted while it runs, its counts once
    it finishes; one pair rejected, one edited and accepted, the rest accepted; the export holds exactly those."""
    from test_webui import ARTIFACTS, _browser, _wait, free_port, start_ui, stop_ui

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs, port, log = tmp_path / "runs", free_port(), tmp_path / "ui.log"
    docs = _docs(tmp_path / "docs")
    out = runs / "synth" / "site-data"
    grpo_run = runs / "grpo"  # a GRPO run's metrics for the Watch tab's rewards row
    grpo_run.mkdir(parents=True)
    (grpo_run / "config.yaml").write_text("model: {name_or_path: x}\n")
    (grpo_run / "metrics.jsonl").write_bytes(GRPO_METRICS.read_bytes())
    playwright, browser = _browser(sync_api)
    # 2 s a reply, three rounds (questions, answers, judge): the job outlives the UI's restart.
    with ScriptedServer(faults=False, latency=2.0) as model_server:
        server = start_ui(runs, port, log)
        try:
            page = browser.new_page(locale="en-US", viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Data").click()
            for field, value in [("docs", str(docs)), ("model-endpoint", model_server.url), ("model-name", "scripted"),
                                 ("name", "site-data"), ("questions", "6")]:  # fmt: skip
                page.locator(f"#data-{field} input").fill(value)
            page.locator("#data-start").click()
            sync_api.expect(page.locator("#data-message")).to_contain_text("synth started", timeout=60_000)
            config = (out / "jobs" / "synth.yaml").read_text()
            assert f"docs: {docs}" in config and "questions_per_chunk: 6" in config and "api_key" not in config
            assert jobs.job_state(out, "synth").command[-2:] == ("synth", str(out / "jobs" / "synth.yaml"))

            stop_ui(server)  # the job is not the UI's child: it goes on, and a new UI finds it
            assert jobs.job_state(out, "synth").running
            server = start_ui(runs, port, log)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Data").click()
            sync_api.expect(page.locator("#data-progress")).to_contain_text(
                "site-data · synth: finished", timeout=300_000
            )
            report = json.loads((out / "report.json").read_text())
            written = report["written"]
            counts = page.locator("#data-counts")
            sync_api.expect(counts).to_contain_text(
                f"requested {report['requested']} · written {written['total']} (train {written['train']}, eval 0)"
            )
            sync_api.expect(counts).to_contain_text(f"filtered {report['filtered']['total']}")
            records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
            assert len(records) == written["train"] >= 3
            sync_api.expect(counts).to_contain_text(f"review: 0 accepted · 0 rejected · {len(records)} pending")
            question = page.locator("#data-question textarea")
            sync_api.expect(question).to_have_value(records[0]["messages"][0]["content"], timeout=30_000)

            page.locator("#data-reject").click()
            sync_api.expect(page.locator("#data-review-message")).to_contain_text("pair 1: rejected")
            sync_api.expect(question).to_have_value(records[1]["messages"][0]["content"])
            question.fill("When do visitors sign in?")
            page.locator("#data-answer textarea").fill("At the front desk, on arrival.")
            page.locator("#data-accept").click()
            sync_api.expect(page.locator("#data-review-message")).to_contain_text("pair 2: accepted")
            page.locator("#data-accept-rest").click()
            sync_api.expect(page.locator("#data-review-message")).to_contain_text(
                f"accepted {len(records) - 2} pending pairs"
            )
            sync_api.expect(counts).to_contain_text(f"review: {len(records) - 1} accepted · 1 rejected · 0 pending")
            page.locator("#data-export").click()
            sync_api.expect(page.locator("#data-review-message")).to_contain_text(
                f"{len(records) - 1} accepted pairs written"
            )
            edited = json.loads(json.dumps(records[1]))
            edited["messages"][0]["content"] = "When do visitors sign in?"
            edited["messages"][-1]["content"] = "At the front desk, on arrival."
            edited["provenance"]["edited"] = True
            exported = [json.loads(line) for line in (out / "reviewed.jsonl").read_text().splitlines()]
            assert exported == [edited, *records[2:]]
            page.screenshot(path=str(ARTIFACTS / "en-data.png"), full_page=True)

            page.get_by_role("tab", name="Watch").click()
            sync_api.expect(page.locator("#watch-grpo")).to_be_visible(timeout=30_000)
            lines = page.locator("#plot-rewards svg [aria-roledescription='line mark'][stroke]")
            _wait("the rewards chart's 5 series", lambda: lines.count() == 5, 30)
            page.screenshot(path=str(ARTIFACTS / "en-watch-grpo.png"), full_page=True)

            chinese = browser.new_page(locale="zh-CN", viewport={"width": 1280, "height": 900})
            chinese.goto(f"http://127.0.0.1:{port}/")
            chinese.get_by_role("tab", name="数据").click()
            sync_api.expect(chinese.locator("#data-start")).to_have_text("开始生成", timeout=60_000)
            sync_api.expect(chinese.locator("#data-docs")).to_contain_text("文档文件夹")
            chinese.wait_for_timeout(2500)  # a refresh of the tab's timer
            chinese.screenshot(path=str(ARTIFACTS / "zh-data.png"), full_page=True)
        finally:
            browser.close()
            playwright.stop()
            stop_ui(server)
            if jobs.job_state(out, "synth").running:  # a failed test leaves no job running
                os.killpg(jobs.job_state(out, "synth").pid, signal.SIGKILL)
