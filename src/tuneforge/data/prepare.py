"""The data stage end to end: config → tokenized train/validation sets, cached on disk by fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.conversation import Conversation, Preference
from tuneforge.data.render import IGNORE, render, render_preference
from tuneforge.data.sources import Sample, build_conversations
from tuneforge.errors import UserError
from tuneforge.io import check_writable
from tuneforge.objective import Objective
from tuneforge.quiet import no_datasets_bars

# Bump when rendering or truncation changes, so old caches are not reused.
CACHE_VERSION = "2"
MULTIPROCESS_ABOVE = 5000
# Warn when data.max_length drops (or truncates) more than this share of the samples.
OVER_LENGTH_WARN_PERCENT = 5


@dataclass
class Prepared:
    """Tokenized splits (datasets.Dataset with input_ids, labels) and what happened on the way."""

    train: Any
    validation: Any | None
    dropped: Counter = field(default_factory=Counter)
    with_reasoning: int = 0  # training samples whose answers carry reasoning (what run.json's thinking is from)
    without_reasoning: int = 0


def _fingerprint(cfg: DataConfig, tokenizer, convs: list[Sample]) -> str:
    digest = hashlib.sha256()
    settings = cfg.model_dump(mode="json", exclude={"num_proc", "cache_dir", "packing", "group_by_length"})
    digest.update(json.dumps([CACHE_VERSION, settings], sort_keys=True).encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for conv in convs:
        digest.update(conv.to_json().encode())
    return digest.hexdigest()[:24]


def _tokenize_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "labels": [], "status": [], "length": []}
    for text in batch["conversation"]:
        r = render(Conversation.from_json(text), tokenizer, cfg.thinking, cfg.train_on)
        out["length"].append(len(r.input_ids))  # before truncation, for the max_length warning
        status = "ok"
        if len(r.input_ids) > cfg.max_length:
            if cfg.truncation == "drop":
                status = "too_long"
            else:
                r.input_ids, r.labels, status = r.input_ids[: cfg.max_length], r.labels[: cfg.max_length], "truncated"
        if status != "too_long" and all(label == IGNORE for label in r.labels):
            status = "no_trained_token"
        out["input_ids"].append(r.input_ids)
        out["labels"].append(r.labels)
        out["status"].append(status)
    return out


PREFERENCE_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_trained", "rejected_trained")


def _tokenize_preference_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> dict[str, list]:
    """Preference samples → shared prompt ids and the answers' ids; a pair is dropped (never cut) when too long."""
    out: dict[str, list] = {key: [] for key in (*PREFERENCE_COLUMNS, "status", "length")}
    for text in batch["conversation"]:
        r = render_preference(Preference.from_json(text), tokenizer, cfg.thinking)
        # The longest row the trainer builds: the prompt with its longer answer.
        length = len(r.prompt_ids) + max(len(r.chosen_ids or []), len(r.rejected_ids or []))
        for key in PREFERENCE_COLUMNS:
            out[key].append(getattr(r, key) or [])
        out["length"].append(length)
        out["status"].append("too_long" if length > cfg.max_length else "ok")
    return out


def tokenize(convs: list[Sample], tokenizer, cfg: DataConfig, cache_root: Path, split: str, objective: Objective):
    """Render and tokenize conversations or preference samples (several processes for big sets), reusing the cache."""
    import datasets

    path = cache_root / f"{_fingerprint(cfg, tokenizer, convs)}-{split}"
    if (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    raw = datasets.Dataset.from_dict({"conversation": [c.to_json() for c in convs]})
    num_proc = cfg.num_proc or (min(os.cpu_count() or 1, 8) if len(convs) > MULTIPROCESS_ABOVE else None)
    tokenized = raw.map(
        _tokenize_batch if objective.sample == "conversation" else _tokenize_preference_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "cfg": cfg},
        remove_columns=["conversation"],
        num_proc=num_proc,
        desc=f"tokenizing {split}",
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with no_datasets_bars():
        tokenized.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def _keep_ok(ds, dropped: Counter, lengths: list[int], objective: Objective):
    statuses = Counter(ds["status"])
    lengths += ds["length"]
    dropped.update({k: v for k, v in statuses.items() if k not in ("ok", "truncated")})
    if statuses.get("truncated"):
        dropped["truncated (kept)"] += statuses["truncated"]
    with no_datasets_bars():
        kept = ds.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
    # Preference pairs keep `length` (prompt + longer answer): the Trainer's group_by_length sampler reads it there.
    return kept.remove_columns(["status", "length"] if objective.sample == "conversation" else ["status"])


def _warn_over_length(lengths: list[int], cfg: DataConfig, log) -> None:
    """Warn when data.max_length cuts many samples, naming the length that keeps 95 % of them whole."""
    over = sum(n > cfg.max_length for n in lengths)
    if 100 * over <= OVER_LENGTH_WARN_PERCENT * len(lengths):
        return
    keeps_95 = sorted(lengths)[(95 * len(lengths) + 99) // 100 - 1]  # the ceil(0.95 n)-th shortest
    action = "drops" if cfg.truncation == "drop" else "truncates"
    log(
        f"warning: data.max_length={cfg.max_length} {action} {over} of {len(lengths)} samples "
        f"({100 * over / len(lengths):.1f} %); data.max_length={keeps_95} keeps 95 % of them whole"
    )


def _lengths(ds, objective: Objective) -> list[int]:
    """Tokens per sample (a preference sample: its prompt and both answers)."""
    if objective.sample == "conversation":
        return [len(x) for x in ds["input_ids"]]
    return [sum(map(len, row)) for row in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]


def _has_reasoning(sample: Sample) -> bool:
    if isinstance(sample, Preference):
        return any(answer is not None and answer.reasoning for answer in (sample.chosen, sample.rejected))
    return sample.has_reasoning


def widest_rows(ds, objective: Objective) -> list[int]:
    """Per prepared sample, the widest row the trainer builds from it (a preference sample: the prompt with its
    longer answer, kept in `length`)."""
    return [len(ids) for ids in ds["input_ids"]] if objective.sample == "conversation" else list(ds["length"])


def check_data_cache(cfg: DataConfig) -> Path:
    """The folder of the tokenized cache, checked writable (`datasets` fails there with a traceback otherwise)."""
    cache_root = Path(cfg.cache_dir or Path.home() / ".cache" / "tuneforge" / "data")
    check_writable(cache_root, "data.cache_dir", folder=True)
    return cache_root


def prepare(cfg: DataConfig, tokenizer, log=print, *, objective: Objective) -> Prepared:
    """Load, convert, mix, split, render and tokenize for `objective`; drop and count samples that cannot be trained."""
    cache_root = check_data_cache(cfg)
    train_convs, val_convs = build_conversations(cfg, log, objective=objective)
    reasoning = sum(_has_reasoning(conv) for conv in train_convs)
    prepared = Prepared(None, None, with_reasoning=reasoning, without_reasoning=len(train_convs) - reasoning)
    lengths: list[int] = []
    train = tokenize(train_convs, tokenizer, cfg, cache_root, "train", objective)
    prepared.train = _keep_ok(train, prepared.dropped, lengths, objective)
    if val_convs:
        validation = tokenize(val_convs, tokenizer, cfg, cache_root, "validation", objective)
        prepared.validation = _keep_ok(validation, prepared.dropped, lengths, objective)
    if prepared.dropped:
        log("data: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in sorted(prepared.dropped.items())))
    _warn_over_length(lengths, cfg, log)
    if len(prepared.train) == 0:
        reason = (
            f"every sample is longer than data.max_length={cfg.max_length}; raise it or set data.truncation: truncate"
            if prepared.dropped.get("too_long")
            else "no sample has a trained token"
        )
        raise UserError(f"data: no training samples left: {reason}")
    lengths = _lengths(prepared.train, objective)
    log(
        f"data: {len(lengths)} training samples, {sum(lengths)} tokens, longest {max(lengths)}, "
        f"mean {sum(lengths) / len(lengths):.0f}"
    )
    return prepared
