"""The Evaluate and Export tabs: `tuneforge eval` / `tuneforge export` jobs on the selected run, with their reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from tuneforge.errors import UserError
from tuneforge.eval.report import HEADER, table_rows
from tuneforge.eval.suite import shipped_suites
from tuneforge.export.gguf_types import GGUF_TYPES, RUN_TYPE
from tuneforge.rundir import Run
from tuneforge.webui import jobs
from tuneforge.webui.i18n import t

REFRESH_S = 2.0


def _state_line(run: Path, kind: str) -> str:
    state = jobs.job_state(run, kind)
    code = f", exit status {state.exit_code}" if state.exit_code is not None else ""
    return f"**{run.name}** · {kind}: {state.state}{code}"


def can_start(selected: str | None, kind: str) -> Any:
    """The start button of `kind`, enabled once the selected run's training finished and while no `kind` job runs."""
    ready = (
        bool(selected) and Run(Path(selected)).summary.is_file() and not jobs.job_state(Path(selected), kind).running
    )
    return gr.Button(interactive=ready)


def _start(selected: str | None, kind: str, args: list[str]) -> str:
    try:
        if not selected:
            raise UserError("choose a run in the Run list first")
        state = jobs.launch(Path(selected), kind, args)
    except UserError as exc:
        return f"❌ {exc}"
    return f"✅ {kind} started (pid {state.pid})"


def latest_report(run: Path) -> tuple[list[list[str]], str | None]:
    """The table rows and chart of the newest eval report in RUN/eval/*/ (none yet: no rows, no chart)."""
    reports = sorted(Run(run).eval_dir.glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return [], None
    results = json.loads(reports[-1].read_text(encoding="utf-8"))
    chart = reports[-1].parent / "chart.png"
    return table_rows(results["tasks"]), str(chart) if chart.is_file() else None


def exported(run: Path) -> str:
    """The export outputs in the run (merged model, GGUF files, Modelfiles) with their sizes."""
    lines = []
    layout = Run(run)
    for folder in (layout.merged, layout.gguf_dir, layout.ollama_dir):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                lines.append(f"{path.relative_to(run)}  {path.stat().st_size / 2**20:.1f} MiB")
    return "\n".join(lines)


def build_eval(run: gr.Dropdown) -> None:
    """The Evaluate tab (inside a gr.Tab)."""
    suites = sorted(shipped_suites())
    with gr.Row():
        suite = gr.Dropdown(suites, value="self-cognition" if "self-cognition" in suites else None, label=t("suite"))
        tasks = gr.Textbox(label=t("tasks"), max_lines=1, elem_id="eval-tasks")
        limit = gr.Number(20, label=t("limit"), precision=0, minimum=1, elem_id="eval-limit")
        start = gr.Button(t("start_eval"), variant="primary", elem_id="eval-start", interactive=False)
    status = gr.Markdown(elem_id="eval-status")
    with gr.Row():
        table = gr.Dataframe(headers=HEADER, label=t("report"), interactive=False, elem_id="eval-table")
        chart = gr.Image(label=t("chart"), type="filepath", interactive=False, elem_id="eval-chart")
    log = gr.Textbox(label=t("log"), lines=10, max_lines=10, autoscroll=True, elem_id="eval-log")

    def args(selected: str | None, suite_name: str | None, task_names: str, items: float | None) -> list[str]:
        given = ["--tasks", task_names.strip()] if task_names.strip() else ["--suite", suite_name or "self-cognition"]
        return ["eval", "--run", str(selected), *given, *(["--limit", str(int(items))] if items else [])]

    start.click(lambda r, s, k, n: _start(r, "eval", args(r, s, k, n)), [run, suite, tasks, limit], status)

    def refresh(selected: str | None) -> list[Any]:
        if not selected:
            return ["", [], None, "", can_start(selected, "eval")]
        path = Path(selected)
        rows, image = latest_report(path)
        return [_state_line(path, "eval"), rows, image, jobs.log_tail(path, "eval"), can_start(selected, "eval")]

    gr.Timer(REFRESH_S).tick(refresh, run, [status, table, chart, log, start], show_progress="hidden")


def build_export(run: gr.Dropdown) -> None:
    """The Export tab (inside a gr.Tab)."""
    with gr.Row():
        targets = gr.CheckboxGroup(["gguf", "ollama"], value=["gguf"], label=t("targets"), elem_id="export-targets")
        qtype = gr.Dropdown(list(GGUF_TYPES), value=RUN_TYPE, label=t("gguf_type"), elem_id="export-type")
        force = gr.Checkbox(False, label=t("force"))
        start = gr.Button(t("start_export"), variant="primary", elem_id="export-start", interactive=False)
    status = gr.Markdown(elem_id="export-status")
    outputs = gr.Textbox(label=t("outputs"), lines=4, elem_id="export-outputs")
    log = gr.Textbox(label=t("log"), lines=12, max_lines=12, autoscroll=True, elem_id="export-log")

    def args(selected: str | None, chosen: list[str], gguf_type: str, replace: bool) -> list[str]:
        to = ",".join(chosen) or "gguf"
        return ["export", "--run", str(selected), "--to", to, "--type", gguf_type, *(["--force"] if replace else [])]

    start.click(lambda r, c, q, f: _start(r, "export", args(r, c, q, f)), [run, targets, qtype, force], status)

    def refresh(selected: str | None) -> list[Any]:
        if not selected:
            return ["", "", "", can_start(selected, "export")]
        path = Path(selected)
        return [
            _state_line(path, "export"),
            exported(path),
            jobs.log_tail(path, "export"),
            can_start(selected, "export"),
        ]

    gr.Timer(REFRESH_S).tick(refresh, run, [status, outputs, log, start], show_progress="hidden")
