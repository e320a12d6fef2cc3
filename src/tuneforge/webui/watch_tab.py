"""The Watch tab: a run's curves from metrics.jsonl, progress and ETA from progress.json, and its log, refreshed every
few seconds."""

from __future__ import annotations

import html
import math
import re
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
# GRPO (issue 27): TRL logs rewards/NAME/mean and /std per reward function, reward (their weighted sum), kl and
# completions/mean_length; these plots show only for a run that logged them.
REWARD = re.compile(r"^rewards/(.+)/(mean|std)$")
GRPO_CURVES = {
    "reward": ("rewards", "total"),
    "kl": ("kl", "KL"),
    "completions/mean_length": ("completion_length", "mean"),
    "completions/max_length": ("completion_length", "max"),
}
PLOTS = ("loss", "lr", "grad_norm", "tokens_s", "memory", "rewards", "kl", "completion_length")
GRPO_PLOTS = PLOTS[5:]
COLORS = {"train": "#ea580c", "validation": "#2563eb"}
PALETTE = ("#ea580c", "#2563eb", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
MAX_POINTS = 1000  # per series (see frames)
# The step axis spans at least this many steps: Vega-Lite puts a tick every ~40 px, so a shorter span on a wide plot
# would be ticked at half steps; a step is a whole number.
MIN_STEP_SPAN = 30


def frames(entries: list[dict[str, Any]]) -> dict[str, pd.DataFrame | None]:
    """One long-format frame (step, value, series) per plot; None for a plot with no points yet (see _plot).

    A series longer than MAX_POINTS is thinned to every k-th point plus its last: a page redraws every plot at each
    refresh, and 240 px of height do not show more.
    """
    rows: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    for entry in entries:
        for key, value in entry.items():
            curve = curve_of(key)
            if curve is not None and isinstance(value, (int, float)) and math.isfinite(value):
                plot, series = curve
                rows.setdefault((plot, series), []).append((entry["step"], float(value), series))
    points: dict[str, list[tuple[int, float, str]]] = {plot: [] for plot in PLOTS}
    for (plot, _), line in rows.items():
        stride = -(-len(line) // MAX_POINTS)
        points[plot] += line[::stride] + ([line[-1]] if (len(line) - 1) % stride else [])
    return {
        plot: pd.DataFrame(shown, columns=["step", "value", "series"]) if shown else None
        for plot, shown in points.items()
    }


def curve_of(key: str) -> tuple[str, str] | None:
    """The (plot, series) a metrics.jsonl key is drawn as, or None."""
    if key in CURVES or key in GRPO_CURVES:
        return {**CURVES, **GRPO_CURVES}[key]
    reward = REWARD.match(key)
    if reward:
        return "rewards", reward.group(1) + (" std" if reward.group(2) == "std" else "")
    return None


def summary(run: Path, entries: list[dict[str, Any]]) -> str:
    """One line: the job's state and the last logged loss."""
    state = jobs.job_state(run, "train")
    parts = [f"**{run.name}**: {state.state if state.state != 'none' else 'not launched from the UI'}"]
    if state.exit_code is not None:
        parts.append(f"exit status {state.exit_code}")
    losses = [e for e in entries if "loss" in e]
    if losses:
        parts.append(f"logged steps {len(losses)}, last loss {losses[-1]['loss']:.4f} at step {losses[-1]['step']}")
    return " · ".join(parts)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def progress_html(progress: dict[str, Any] | None) -> str:
    """A progress bar with step / total, elapsed and ETA, from RUN/progress.json (empty before training starts)."""
    if not progress or not progress.get("max_steps"):
        return ""
    step, total = progress["step"], progress["max_steps"]
    line = f"step {step} / {total} · elapsed {_clock(progress['elapsed_s'])} · ETA {_clock(progress['eta_s'])}"
    return (
        f"<div class='tf-progress'><progress value='{step}' max='{total}'></progress>"
        f"<span>{html.escape(line)}</span></div>"
    )


def stepped(frame: pd.DataFrame | None, last_step: int = 0, log: bool = False) -> dict[str, Any]:
    """A plot's value and axes: its frame (log10 of the values on a log scale), a whole-step axis to `last_step`."""
    if frame is None:
        return {"value": None}
    if log:
        frame = frame[frame.value > 0].assign(value=lambda f: f.value.map(math.log10))
    span = max(int(frame.step.max()), last_step, MIN_STEP_SPAN)
    shown = {"value": frame, "x_lim": [0, span], "y_title": "log10(value)" if log else "value"}
    if "series" in frame.columns:
        # Gradio 6.31 redraws a plot whose data changed with the colour domain of its first drawing (a series added
        # later has no colour, no line) unless an axis or the colour map changed: one colour per series present.
        names = list(dict.fromkeys(frame.series))
        shown["color_map"] = {n: COLORS.get(n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)}
    return shown


def build(run: gr.Dropdown) -> None:
    """The Watch tab's components (inside a gr.Tab), refreshed by a timer while the page is open."""
    status = gr.Markdown(elem_id="watch-status")
    bar = gr.HTML(elem_id="watch-progress")
    plots = {}
    with gr.Row():
        with gr.Column(scale=2):
            plots["loss"] = loss_plot("plot-loss")
            log_scale = gr.Checkbox(False, label=t("log_scale"), elem_id="watch-log-scale")
        for plot in PLOTS[1:3]:
            plots[plot] = _plot(plot)
    with gr.Row():
        for plot in PLOTS[3:5]:
            plots[plot] = _plot(plot)
    with gr.Row(visible=False, elem_id="watch-grpo") as grpo:
        for plot in GRPO_PLOTS:
            plots[plot] = _plot(plot, color="series", height=300)  # room for the legend of several rewards
    log = gr.Textbox(label=t("log"), lines=16, max_lines=16, autoscroll=True, elem_id="watch-log")

    def refresh(selected: str | None, log_loss: bool) -> list[Any]:
        if not selected:
            return ["", "", *(None for _ in PLOTS), gr.Row(visible=False), ""]
        path = Path(selected)
        entries = jobs.metrics(path)
        progress = jobs.progress(path)
        shown = frames(entries)
        total = progress["max_steps"] if progress else 0
        curves = [gr.LinePlot(**stepped(shown[p], total, log_loss and p == "loss")) for p in PLOTS]
        grpo_shown = gr.Row(visible=shown["rewards"] is not None)
        return [summary(path, entries), progress_html(progress), *curves, grpo_shown, jobs.log_tail(path, "train")]

    outputs = [status, bar, *(plots[p] for p in PLOTS), grpo, log]
    gr.Timer(REFRESH_S).tick(refresh, [run, log_scale], outputs, show_progress="hidden")
    run.change(refresh, [run, log_scale], outputs, show_progress="hidden")
    log_scale.change(refresh, [run, log_scale], outputs, show_progress="hidden")


def loss_plot(elem_id: str, **shown: Any) -> gr.LinePlot:
    """A plot of loss against step, one line per `series` (train and validation, or per run); `shown`: stepped()'s
    value and axes (and the component's key)."""
    return gr.LinePlot(x="step", y="value", color="series", label=t("loss"), height=240, elem_id=elem_id, **shown)


def _plot(plot: str, **shown: Any) -> gr.LinePlot:
    return gr.LinePlot(None, x="step", y="value", label=t(plot), elem_id=f"plot-{plot}", **{"height": 240, **shown})
