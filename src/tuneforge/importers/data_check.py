"""Load and render every imported dataset: records kept and dropped (and why), and where LLaMA-Factory's template
would render a different text than the model's own, which tuneforge uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tuneforge.config import Config
from tuneforge.data.conversation import Conversation, Preference
from tuneforge.errors import UserError
from tuneforge.importers.report import DatasetCheck, ImportReport
from tuneforge.objective import Objective

IGNORE_LABEL = -100


def _trained_text(rendered, tokenizer) -> str:
    return tokenizer.decode([i for i, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE_LABEL])


def _conversations(sample) -> list[Conversation]:
    """The conversations a sample trains on: itself, or its prompt with each answer."""
    if isinstance(sample, Preference):
        return [sample.with_answer(a) for a in (sample.chosen, sample.rejected) if a is not None]
    return [sample]


def _first_difference(ours: str, theirs: str) -> str:
    """Where two texts part, with a little context on each side."""
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    window = slice(max(0, at - 20), at + 30)
    return f"at character {at}: tuneforge {ours[window]!r} vs LLaMA-Factory {theirs[window]!r}"


def _compare(check: DatasetCheck, pairs: list[tuple[str, str, str, str]], template: str) -> None:
    """Note how many conversations render the same whole text and the same trained text in both tools."""
    if not pairs:
        return
    same_text = sum(ours == theirs for ours, theirs, _, _ in pairs)
    same_trained = sum(ours == theirs for _, _, ours, theirs in pairs)
    check.notes.append(
        f"LLaMA-Factory template {template}: {same_text} of {len(pairs)} conversations render the same text, "
        f"{same_trained} the same trained text"
    )
    for label, index in (("text", 0), ("trained text", 2)):
        differing = next((p for p in pairs if p[index] != p[index + 1]), None)
        if differing is not None:
            check.notes.append(f"first {label} difference {_first_difference(differing[index], differing[index + 1])}")


def check_dataset(cfg: Config, index: int, tokenizer, report: ImportReport, lf_template: tuple[str, bool] | None):
    """Load dataset `index` of `cfg`, render each sample, and add what happened to the report."""
    from tuneforge.data.render import render
    from tuneforge.data.sources import load_conversations
    from tuneforge.importers.lf_template import TEMPLATES, lf_text

    ds = cfg.data.datasets[index]
    check = DatasetCheck(f"data.datasets.{index}", ds.path)
    report.datasets.append(check)
    if not Path(ds.path).expanduser().exists():
        # a hub dataset: the check never starts a download (tuneforge download fetches it ahead of time)
        check.notes.append(f"not checked: not a local file here (`tuneforge download {ds.path} --kind dataset`)")
        return
    try:
        samples = load_conversations(ds, log=check.notes.append, objective=Objective.of(cfg.method))
    except UserError as exc:
        check.notes.append(f"does not load: {exc}")
        return
    samples = samples[: ds.max_samples] if ds.max_samples else samples
    if tokenizer is None:
        check.kept = len(samples)
        check.notes.append("not rendered: the model's tokenizer is not available here")
        return
    dropped: Counter[str] = Counter()
    pairs = []
    for sample in samples:
        try:
            renders = [
                (conv, render(conv, tokenizer, cfg.data.thinking, cfg.data.train_on)) for conv in _conversations(sample)
            ]
        except (ValueError, KeyError) as exc:
            dropped[f"does not render ({str(exc)[:80]})"] += 1
            continue
        if any(len(r.input_ids) > cfg.data.max_length for _, r in renders) and cfg.data.truncation == "drop":
            dropped[f"longer than data.max_length {cfg.data.max_length}"] += 1
            continue
        check.kept += 1
        if lf_template and lf_template[0] in TEMPLATES:
            for conv, r in renders:
                theirs = lf_text(conv, *lf_template)
                if theirs is not None:
                    pairs.append((r.text, theirs[0], _trained_text(r, tokenizer), theirs[1]))
    check.dropped = dict(dropped)
    if lf_template and lf_template[0] in TEMPLATES:
        _compare(check, pairs, lf_template[0])


def _tokenizer(cfg: Config):
    """The model's tokenizer when it is on this machine (a check never downloads a model), else None."""
    from tuneforge.model.load import load_tokenizer

    source = cfg.model.tokenizer or cfg.model.name_or_path
    if not Path(source).expanduser().is_dir():
        return None
    try:
        return load_tokenizer(cfg.model)
    except UserError:
        return None


def check_datasets(cfg: Config, report: ImportReport) -> None:
    """Check every dataset of an imported config; results go into the report."""
    tokenizer = _tokenizer(cfg)
    template = tuple(report.lf_template) if report.lf_template else None
    for index in range(len(cfg.data.datasets)):
        check_dataset(cfg, index, tokenizer, report, template)
