"""`data preview` and `data render`: samples with trained tokens highlighted (each side of a preference sample), a
token-length summary, and the rows the trainer receives."""

from __future__ import annotations

from statistics import mean, median
from typing import Any

from tuneforge.data.prepare import widest_rows
from tuneforge.data.render import IGNORE
from tuneforge.objective import Objective


def trained_segments(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool]]:
    """The sample as (text, trained?) runs, decoded run by run."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def sides(row: dict[str, Any], objective: Objective) -> dict[str, tuple[list[int], list[int]]]:
    """A prepared sample's rows as {name: (input_ids, labels)}: an SFT sample's one row (name ""), a pair's chosen and
    rejected rows, or a KTO answer's row named by its label (desirable / undesirable)."""
    if objective.sample == "conversation":
        return {"": (row["input_ids"], row["labels"])}
    present = [side for side in ("chosen", "rejected") if row[f"{side}_ids"]]
    names = present if objective.sample == "pair" else ["desirable" if present == ["chosen"] else "undesirable"]
    out = {}
    for name, side in zip(names, present):
        answer, trained = row[f"{side}_ids"], row[f"{side}_trained"]
        labels = [IGNORE] * len(row["prompt_ids"]) + answer[:trained] + [IGNORE] * (len(answer) - trained)
        out[name] = (row["prompt_ids"] + answer, labels)
    return out


def rendered_record(row: dict[str, Any], objective: Objective) -> dict[str, Any]:
    """One `data render` line: {input_ids, labels}; a pair: {chosen: {...}, rejected: {...}}; KTO: label added."""
    rows = {name: {"input_ids": ids, "labels": labels} for name, (ids, labels) in sides(row, objective).items()}
    if objective.sample == "conversation":
        return rows[""]
    if objective.sample == "pair":
        return rows
    [(name, record)] = rows.items()
    return {"label": name == "desirable", **record}


def preview(dataset, tokenizer, count: int, console, objective: Objective) -> None:
    """Print `count` samples (trained text in green; both answers of a pair) and the length distribution."""
    from rich.text import Text

    for i in range(min(count, len(dataset))):
        for name, (ids, labels) in sides(dataset[i], objective).items():
            trained = sum(label != IGNORE for label in labels)
            side = f" {name}" + (f" (label {name == 'desirable'})" if name in ("desirable", "undesirable") else "")
            console.rule(f"sample {i}{side if name else ''}: {len(ids)} tokens, {trained} trained")
            text = Text()
            for chunk, is_trained in trained_segments(ids, labels, tokenizer):
                text.append(chunk, style="bold green" if is_trained else "dim")
            console.print(text)
    lengths = sorted(widest_rows(dataset, objective))  # a pair: its prompt with the longer answer
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    console.rule("token lengths")
    console.print(
        f"samples {len(lengths)}  min {lengths[0]}  median {median(lengths):.0f}  mean {mean(lengths):.0f}  "
        f"p95 {p95}  max {lengths[-1]}  (green: trained, dim: prompt)"
    )
