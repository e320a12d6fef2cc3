"""The Compare tab: several runs side by side: loss curves overlaid, final metrics, the config keys that differ, and
their eval reports in one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tuneforge.errors import UserError
from tuneforge.eval.report import table_rows
from tuneforge.rundir import Run
from tuneforge.webui import jobs, watch_tab
from tuneforge.webui.i18n import t

FINAL = ("steps", "train_loss", "eval_loss", "tokens_per_s", "wall_time_s")  # summary.json keys, eval_loss from metrics


def curves(runs: list[Path]) -> pd.DataFrame | None:
    """Every run's train and validation loss in one long frame (series: `RUN train`, `RUN validation`)."""
    frames = []
    for run in runs:
        loss = watch_tab.frames(jobs.metrics(run))["loss"]
        if loss is not None:
            frames.append(loss.assign(series=run.name + " " + loss.series))
    return pd.concat(frames, ignore_index=True) if frames else None


def final_metrics(runs: list[Path]) -> list[list[Any]]:
    """One row per run: steps, final train loss, last validation loss, tokens/s and wall time (blank: not yet)."""
    rows = []
    for run in runs:
        summary = json.loads(Run(run).summary.read_text(encoding="utf-8")) if Run(run).summary.is_file() else {}
        evals = [e["eval_loss"] for e in jobs.metrics(run) if "eval_loss" in e]
        summary.setdefault("eval_loss", evals[-1] if evals else None)
        rows.append([run.name, *(_fmt(summary.get(key)) for key in FINAL)])
    return rows


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (datasets by index: data.datasets.0.path)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        return {k: v for i, item in enumerate(node) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: node}


def config_diff(runs: list[Path]) -> list[list[str]]:
    """The resolved config keys whose values differ between the runs: key, then each run's value."""
    flat = [_flat(Run(run).cfg.model_dump(mode="json")) for run in runs]
    keys = sorted({key for config in flat for key in config})
    return [
        [key, *(json.dumps(config.get(key), ensure_ascii=False) for config in flat)]
        for key in keys
        if key != "output.dir" and len({json.dumps(config.get(key), sort_keys=True) for config in flat}) > 1
    ]


def eval_table(runs: list[Path]) -> list[list[str]]:
    """Every eval report of the runs in one table: suite, task, metric, then each run's baseline → fine-tuned."""
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for run in runs:
        for report in sorted(Run(run).eval_dir.glob("*/results.json")):
            for task, metric, base, tuned, *_ in table_rows(json.loads(report.read_text(encoding="utf-8"))["tasks"]):
                cells.setdefault((report.parent.name, task, metric), {})[run.name] = f"{base} → {tuned}"
    return [[*key, *(values.get(run.name, "") for run in runs)] for key, values in cells.items()]


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def build(runs_dir: Path) -> None:
    """The Compare tab (inside a gr.Tab)."""

    def choices() -> list[tuple[str, str]]:
        return [(p.name, str(p)) for p in jobs.list_runs(runs_dir)]

    with gr.Row():
        picked = gr.Dropdown(choices(), multiselect=True, label=t("runs"), elem_id="compare-runs", scale=4)
        log_scale = gr.Checkbox(False, label=t("log_scale"), elem_id="compare-log", scale=1)
    picked.focus(lambda: gr.Dropdown(choices=choices()), None, picked)

    # Drawn afresh (a new plot, by its key) for each choice: Gradio 6.31's line plot, given new data and colours at
    # once, redraws with the data it had before (remove once a newer Gradio redraws in place).
    @gr.render(inputs=[picked, log_scale])
    def show(selected: list[str] | None, log: bool) -> None:
        runs = [Path(p) for p in selected or []]
        names = [run.name for run in runs]
        try:
            differing = config_diff(runs)
        except UserError as exc:  # a run without config.yaml yet (launched, still preparing its data)
            differing = [[str(exc), *("" for _ in runs)]]
        plotted = watch_tab.stepped(curves(runs), log=log)
        watch_tab.loss_plot("compare-loss", key=f"compare-loss:{':'.join(names)}:{log}", **plotted)
        gr.Dataframe(final_metrics(runs), headers=["run", *FINAL], label=t("final_metrics"), interactive=False,
                     elem_id="compare-final")  # fmt: skip
        gr.Dataframe(pd.DataFrame(differing, columns=["key", *names]), label=t("config_diff"), interactive=False,
                     elem_id="compare-diff")  # fmt: skip
        gr.Dataframe(pd.DataFrame(eval_table(runs), columns=["suite", "task", "metric", *names]),
                     label=t("eval_reports"), interactive=False, elem_id="compare-eval")  # fmt: skip
