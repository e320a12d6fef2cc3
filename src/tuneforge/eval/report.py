"""The eval report: task means per model, and the folder RUN/eval/<name>/ written in one atomic step.

report.md      one table: task, metric, baseline, fine-tuned, delta, n (and thinking-truncated counts)
results.json   the same numbers, plus per-subject accuracy for multiple choice
samples.jsonl  one line per item and model
chart.png      baseline vs fine-tuned per task (and per subject for multiple choice)
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tuneforge.answers import TRUNCATED
from tuneforge.eval.judge import aggregate
from tuneforge.eval.tasks import Row, perplexity
from tuneforge.io import atomic_dir

ROLES = ("baseline", "tuned")


def _mean(rows: list[Row], metric: str) -> float | None:
    scored = [r for r in rows if metric in r.score]
    total = sum(r.weight for r in scored)
    return sum(r.score[metric] * r.weight for r in scored) / total if total else None


def summarize(rows: list[Row]) -> dict[str, Any]:
    """{task: {metric: {role: mean}, n: items, truncated: {role: count}, subjects: {...}}} in task order."""
    by_task: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_task[row.task].append(row)
    results = {}
    for task, task_rows in by_task.items():
        by_role = {
            role: [r for r in task_rows if r.model == role] for role in ROLES if any(r.model == role for r in task_rows)
        }
        metric_names = list(dict.fromkeys(m for r in task_rows for m in r.score))
        entry: dict[str, Any] = {"metrics": {}, "n": len(next(iter(by_role.values())))}
        for metric in metric_names:
            entry["metrics"][metric] = {role: _mean(rs, metric) for role, rs in by_role.items()}
        if "loss" in entry["metrics"]:
            losses = entry["metrics"]["loss"]
            entry["metrics"]["perplexity"] = {
                role: perplexity(v) if v is not None else None for role, v in losses.items()
            }
        entry["truncated"] = {role: sum(r.outcome == TRUNCATED for r in rs) for role, rs in by_role.items()}
        subjects = sorted({r.subject for r in task_rows if r.subject})
        if subjects:
            entry["subjects"] = {
                s: {role: _mean([r for r in rs if r.subject == s], "accuracy") for role, rs in by_role.items()}
                for s in subjects
            }
        judged = aggregate(task_rows)
        if judged:  # its metric stays in the table even when no verdict could be read
            entry["metrics"].setdefault(judged["metric"], dict.fromkeys(by_role))
            entry["judge"] = judged
        results[task] = entry
    return results


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Rows of the report table: task, metric, baseline, fine-tuned, delta, n."""
    out = []
    for task, entry in results.items():
        for metric, values in entry["metrics"].items():
            base, tuned = values.get("baseline"), values.get("tuned")
            delta = tuned - base if base is not None and tuned is not None else None
            n = str(entry["n"])
            cut = {role: c for role, c in entry["truncated"].items() if c}
            if cut:
                n += " (thinking truncated: " + ", ".join(f"{role} {c}" for role, c in cut.items()) + ")"
            if "judge" in entry:
                n += f" ({entry['judge']['summary']})"
            out.append([task, metric, _fmt(base), _fmt(tuned), "—" if delta is None else f"{delta:+.4f}", n])
    return out


HEADER = ["task", "metric", "baseline", "fine-tuned", "delta", "n"]


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """report.md: what was evaluated and how, then the table."""
    lines = [f"# Eval: {meta['suite']}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items() if key != "suite"]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Bars of baseline vs fine-tuned: each task's first metric, then each multiple-choice subject's accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], {role: [] for role in ROLES}
    for task, entry in results.items():
        metric, by_role = next(iter(entry["metrics"].items()))
        groups = [(f"{task}\n{metric}", by_role)]
        groups += [(f"{task}/{s}", v) for s, v in entry.get("subjects", {}).items()]
        for label, by_role in groups:
            labels.append(label)
            for role in ROLES:
                values[role].append(by_role.get(role) or 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4.5))
    width = 0.4
    for k, role in enumerate(ROLES):
        ax.bar([i + (k - 0.5) * width for i in range(len(labels))], values[role], width, label=role)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_title("baseline vs fine-tuned")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, rows: list[Row], results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write report.md, results.json, samples.jsonl and chart.png into `out`, all or nothing."""
    with atomic_dir(out) as tmp:
        (tmp / "report.md").write_text(markdown(results, meta), encoding="utf-8")
        (tmp / "results.json").write_text(json.dumps({**meta, "tasks": results}, indent=2, ensure_ascii=False) + "\n")
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                record = {k: v for k, v in dataclasses.asdict(row).items() if k != "weight"}
                if "accuracy" in row.score:
                    record["correct"] = row.score["accuracy"] == 1.0
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        chart(results, tmp / "chart.png")
