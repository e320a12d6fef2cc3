"""The Watch tab: a run's curves from metrics.jsonl, progress and ETA, and its log, refreshed every few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tuneforge.webui import jobs
from tuneforge.webui.i18n import t

REFRESH_S = 2.0
# metrics.jsonl key → (plot, series); transformers names tokens/s train_tokens_per_second, memory_gib is ours.
CURVES = {
    "loss": ("loss", "train"),
    "eval_loss": ("loss", "validation"),
    "learning_rate": ("lr", "learning rate"),
    "grad_norm": ("grad_norm", "grad norm"),
    "train_tokens_per_second": ("tokens_s", "tokens/s"),
    "memory_gib": ("memory", "memory"),
}
PLOTS = ("loss", "lr", "grad_norm", "tokens_s", "memory")
COLORS = {"train": "#ea580c", "validation": "#2563eb"}
MAX_POINTS = 1000  # per series (see frames)


def frames(entries: list[dict[str, Any]]) -> dict[str, pd.DataFrame | None]:
    """One long-format frame (step, value, series) per plot; None for a plot with no points yet (see _plot).

    A series longer than MAX_POINTS is thinned to every k-th point plus its last: a page redraws every plot at each
    refresh, and 240 px of height do not show more.
    """
    rows: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    for entry in entries:
        for key, (plot, series) in CURVES.items():
            if isinstance(entry.get(key), (int, float)):
                rows.setdefault((plot, series), []).append((entry["step"], float(entry[key]), series))
    points: dict[str, list[tuple[int, float, str]]] = {plot: [] for plot in PLOTS}
    for (plot, _), line in rows.items():
        stride = -(-len(line) // MAX_POINTS)
        points[plot] += line[::stride] + ([line[-1]] if (len(line) - 1) % stride else [])
    return {
        plot: pd.DataFrame(shown, columns=["step", "value", "series"]) if shown else None
        for plot, shown in points.items()
    }


def summary(run: Path, entries: list[dict[str, Any]], bar: tuple[int, int, str, str] | None) -> str:
    """One line: the job's state, step / total, elapsed and ETA (from `bar`), and the last logged loss."""
    state = jobs.job_state(run, "train")
    parts = [f"**{run.name}**: {state.state if state.state != 'none' else 'not launched from the UI'}"]
    if state.exit_code is not None:
        parts.append(f"exit status {state.exit_code}")
    if bar:
        step, total, elapsed, eta = bar
        parts.append(f"step {step}/{total}, elapsed {elapsed}, ETA {eta}")
    losses = [e for e in entries if "loss" in e]
    if losses:
        parts.append(f"logged steps {len(losses)}, last loss {losses[-1]['loss']:.4f} at step {losses[-1]['step']}")
    return " · ".join(parts)


def build(run: gr.Dropdown) -> None:
    """The Watch tab's components (inside a gr.Tab), refreshed by a timer while the page is open."""
    status = gr.Markdown(elem_id="watch-status")
    bar = gr.Slider(0, 1, value=0, label=t("progress"), interactive=False, elem_id="watch-progress")
    plots = {}
    with gr.Row():
        for plot in PLOTS[:3]:
            plots[plot] = _plot(plot)
    with gr.Row():
        for plot in PLOTS[3:]:
            plots[plot] = _plot(plot)
    log = gr.Textbox(label=t("log"), lines=16, max_lines=16, autoscroll=True, elem_id="watch-log")

    def refresh(selected: str | None) -> list[Any]:
        if not selected:
            return ["", 0, *(None for _ in PLOTS), ""]
        path = Path(selected)
        entries = jobs.metrics(path)
        progress = jobs.progress(path)
        share = progress[0] / progress[1] if progress and progress[1] else 0
        shown = frames(entries)
        return [summary(path, entries, progress), share, *(shown[p] for p in PLOTS), jobs.log_tail(path, "train")]

    outputs = [status, bar, *plots.values(), log]
    gr.Timer(REFRESH_S).tick(refresh, run, outputs, show_progress="hidden")
    run.change(refresh, run, outputs, show_progress="hidden")


def _plot(plot: str) -> gr.LinePlot:
    # No value until the first refresh: a plot first drawn from an empty frame keeps an empty colour domain and draws
    # its later lines without a stroke, invisible (Gradio 6.31; remove this note once a newer Gradio draws them).
    return gr.LinePlot(
        None,
        x="step",
        y="value",
        color="series" if plot == "loss" else None,
        color_map=COLORS if plot == "loss" else None,
        label=t(plot),
        height=240,
        elem_id=f"plot-{plot}",
    )
