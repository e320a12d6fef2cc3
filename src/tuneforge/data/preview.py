"""`data preview`: samples with trained tokens highlighted, and a token-length summary."""

from __future__ import annotations

from statistics import mean, median

from tuneforge.data.render import IGNORE


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


def preview(dataset, tokenizer, count: int, console) -> None:
    """Print `count` samples (trained text in green) and the length distribution."""
    from rich.text import Text

    for i in range(min(count, len(dataset))):
        row = dataset[i]
        console.rule(
            f"sample {i}: {len(row['input_ids'])} tokens, {sum(label != IGNORE for label in row['labels'])} trained"
        )
        text = Text()
        for chunk, trained in trained_segments(row["input_ids"], row["labels"], tokenizer):
            text.append(chunk, style="bold green" if trained else "dim")
        console.print(text)
    lengths = sorted(len(ids) for ids in dataset["input_ids"])
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    console.rule("token lengths")
    console.print(
        f"samples {len(lengths)}  min {lengths[0]}  median {median(lengths):.0f}  mean {mean(lengths):.0f}  "
        f"p95 {p95}  max {lengths[-1]}  (green: trained, dim: prompt)"
    )
