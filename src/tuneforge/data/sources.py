"""Load datasets (local files, folders, Hugging Face, ModelScope), convert them, mix and split.

Local files are read here rather than through `datasets.load_dataset` so that every record keeps
its file and line: a bad record is reported as `file:line: reason`, not as an Arrow traceback.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig, DatasetConfig, looks_like_path, not_found
from tuneforge.data.conversation import Conversation, Message, Preference
from tuneforge.data.formats import (
    FORMATS,
    SAMPLE_OF,
    SFT_FORMATS,
    RecordError,
    detect_format,
    fill_placeholders,
    to_conversation,
    to_preference,
    unfilled_placeholders,
)
from tuneforge.errors import UserError, unreadable
from tuneforge.objective import SFT, Objective, trained_on

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


@dataclass
class Located:
    """A raw record and where it came from (for error messages)."""

    record: Any
    where: str


def _json_array(path: Path, text: str) -> Iterator[Located]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line_at = _line_counter(text)
    first = True
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        if not first:
            # Records must be separated by one comma, as json.loads would insist; a missing one is an error.
            if pos >= len(text) or text[pos] != ",":
                found = repr(text[pos]) if pos < len(text) else "the end of the file"
                raise UserError(
                    f"{path}:{line_at(pos)}: invalid JSON (expected ',' or ']' after a record, found {found})"
                )
            pos = _skip_space(text, pos + 1)
        if pos >= len(text):
            raise UserError(f"{path}:{line_at(pos)}: invalid JSON (unterminated array)")
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        yield Located(record, f"{path}:{line_at(pos)}")
        pos, first = end, False


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_counter(text: str):
    """pos → 1-based line number, amortised over increasing positions."""
    state = {"pos": 0, "line": 1}

    def line_at(pos: int) -> int:
        state["line"] += text.count("\n", state["pos"], pos)
        state["pos"] = pos
        return state["line"]

    return line_at


def _jsonl(path: Path, text: str) -> Iterator[Located]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Located(json.loads(line), f"{path}:{number}")
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON line ({exc.msg} at column {exc.colno})") from None


def read_file(path: Path) -> Iterator[Located]:
    """Records of one local file, each with its `file:line`."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with unreadable(path, "parquet file", "re-export or re-download it", pa.ArrowException):
            rows = pq.read_table(path).to_pylist()
        for i, row in enumerate(rows):
            yield Located(row, f"{path}:row {i + 1}")
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if suffix == ".csv":
        for i, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            yield Located(row, f"{path}:{i}")
    elif suffix == ".json" and text.lstrip().startswith("["):
        yield from _json_array(path, text)
    elif suffix in (".json", ".jsonl"):
        yield from _jsonl(path, text)
    else:
        raise UserError(f"{path}: unsupported file type '{suffix}'; expected one of {', '.join(SUFFIXES)}")


def _hub_records(ds: DatasetConfig, source: str) -> Iterator[Located]:
    try:
        if source == "modelscope":
            from modelscope import MsDataset

            rows = MsDataset.load(ds.path, subset_name=ds.subset, split=ds.split)
        else:
            import datasets

            rows = datasets.load_dataset(ds.path, name=ds.subset, split=ds.split)
    except ImportError:
        raise UserError(f"data.datasets: '{ds.path}' needs ModelScope: pip install 'tuneforge[modelscope]'") from None
    except Exception as exc:  # hub clients raise many types; all mean "could not load"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"data.datasets: '{ds.path}' is not a local path and could not be loaded from {source} ({reason}); "
            "check the path or id, the network, or set source:"
        ) from None
    for i, row in enumerate(rows):
        yield Located(dict(row), f"{source}:{ds.path}[{i}]")


def raw_records(ds: DatasetConfig) -> Iterator[Located]:
    """Every record of one configured dataset, with its location."""
    path = Path(ds.path).expanduser()
    if ds.source == "auto":
        source = "local" if path.exists() or looks_like_path(ds.path) else "huggingface"
    else:
        source = ds.source
    if source != "local":
        yield from _hub_records(ds, source)
        return
    if not path.exists():
        raise UserError(not_found("data.datasets", ds.path))
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise UserError(f"data.datasets: {path}: no {'/'.join(SUFFIXES)} files in this folder")
    for file in files:
        yield from read_file(file)


# A sample is a Conversation (sft) or a Preference (pairwise or unpaired preference objectives).
Sample = Conversation | Preference


def _check_objective(fmt: str, objective: Objective, where: str) -> None:
    if SAMPLE_OF[fmt] != objective.sample:
        raise UserError(
            f"{where}: format '{fmt}' holds {trained_on(SAMPLE_OF[fmt])}, but method.objective: {objective.name} "
            f"trains on {trained_on(objective.sample)}; change method.objective or use one of the formats "
            f"{', '.join(FORMATS[objective.sample])}"
        )


def messages_view(sample: Sample) -> Conversation:
    """Every message of a sample as one Conversation (the same Message objects: edits reach the sample)."""
    if isinstance(sample, Conversation):
        return sample
    answers = [m for m in (sample.chosen, sample.rejected) if m is not None]
    return Conversation([*sample.prompt.messages, *answers])


def load_conversations(ds: DatasetConfig, log=print, objective: Objective = SFT) -> list[Sample]:
    """Load and convert one dataset; `format: auto` detects the layout from the first record."""
    fmt = ds.format
    out: list[Sample] = []
    unfilled: Counter[str] = Counter()
    for item in raw_records(ds):
        if fmt == "auto":
            fmt = detect_format(item.record, ds.columns) if isinstance(item.record, dict) else None
            if fmt is None:
                keys = sorted(item.record) if isinstance(item.record, dict) else type(item.record).__name__
                raise UserError(
                    f"{item.where}: cannot detect the data format from columns {keys}; set format: to one of "
                    f"{', '.join(FORMATS[objective.sample])} (and columns: to map names)"
                )
            log(f"{ds.path}: format auto → {fmt}")
            _check_objective(fmt, objective, item.where)
        elif not out:
            _check_objective(fmt, objective, item.where)
        try:
            sample = (to_conversation if fmt in SFT_FORMATS else to_preference)(item.record, fmt, ds.columns)
        except RecordError as exc:
            raise UserError(f"{item.where}: {exc}") from None
        prompt = sample if isinstance(sample, Conversation) else sample.prompt
        if ds.system and not any(m.role == "system" for m in prompt.messages):
            prompt.messages.insert(0, Message("system", ds.system))
        view = messages_view(sample)
        fill_placeholders(view, ds.placeholders)
        unfilled.update(unfilled_placeholders(view))
        out.append(sample)
    if not out:
        raise UserError(f"data.datasets: {ds.path}: the dataset is empty")
    for name, count in sorted(unfilled.items()):
        log(
            f"warning: {ds.path}: {{{{{name}}}}} is left unfilled in {count} of {len(out)} records; "
            f"set it in this dataset's placeholders: {{{name}: ...}}"
        )
    return out


def mix(parts: list[list[Sample]], weights: list[float | None], seed: int) -> tuple[list[Sample], list[int]]:
    """Combine datasets: (mixed, samples taken from each). With weights, each gets its share, the scarcest whole."""
    rng = random.Random(seed)
    if all(w is None for w in weights):
        taken = [len(part) for part in parts]
        combined = [c for part in parts for c in part]
    else:
        shares = [w if w is not None else 1.0 for w in weights]
        total_share = sum(shares)
        # The largest total that needs no dataset to be repeated: every sample is seen at most once.
        total = min(len(part) * total_share / share for part, share in zip(parts, shares))
        taken = [min(len(part), round(total * share / total_share)) for part, share in zip(parts, shares)]
        combined = [c for part, n in zip(parts, taken) for c in rng.sample(part, n)]
    rng.shuffle(combined)
    return combined, taken


def split(convs: list[Sample], val_size: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split into (train, validation); val_size is a share (< 1) or a count (>= 1)."""
    count = int(val_size) if val_size >= 1 else round(len(convs) * val_size)
    if count >= len(convs):
        raise UserError(f"data.val_size: {val_size} leaves no training samples (dataset has {len(convs)})")
    order = list(range(len(convs)))
    random.Random(seed + 1).shuffle(order)
    val = set(order[:count])
    return [c for i, c in enumerate(convs) if i not in val], [c for i, c in enumerate(convs) if i in val]


def build_conversations(cfg: DataConfig, log=print, *, objective: Objective) -> tuple[list[Sample], list[Sample]]:
    """All configured datasets loaded, capped, mixed and split: (train, validation), as `objective` trains on them."""
    parts = []
    for ds in cfg.datasets:
        convs = load_conversations(ds, log, objective)
        random.Random(cfg.seed).shuffle(convs)
        if ds.max_samples:
            convs = convs[: ds.max_samples]
        parts.append(convs)
    mixed, taken = mix(parts, [ds.weight for ds in cfg.datasets], cfg.seed)
    train, val = split(mixed, cfg.val_size, cfg.seed)
    counts = ", ".join(
        f"{ds.path}: {n} of {len(p)} ({100 * n / len(mixed):.1f} %)" for ds, p, n in zip(cfg.datasets, parts, taken)
    )
    log(f"data: mixed {len(mixed)} samples, {counts} → train {len(train)}, validation {len(val)}")
    return train, val
