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
from tuneforge.data.conversation import Conversation
from tuneforge.data.render import IGNORE, render
from tuneforge.data.sources import build_conversations
from tuneforge.errors import UserError

# Bump when rendering or truncation changes, so old caches are not reused.
CACHE_VERSION = "1"
MULTIPROCESS_ABOVE = 5000


@dataclass
class Prepared:
    """Tokenized splits (datasets.Dataset with input_ids, labels) and what happened on the way."""

    train: Any
    validation: Any | None
    dropped: Counter = field(default_factory=Counter)


def _fingerprint(cfg: DataConfig, tokenizer, convs: list[Conversation]) -> str:
    digest = hashlib.sha256()
    settings = cfg.model_dump(mode="json", exclude={"num_proc", "cache_dir", "packing", "group_by_length"})
    digest.update(json.dumps([CACHE_VERSION, settings], sort_keys=True).encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for conv in convs:
        digest.update(conv.to_json().encode())
    return digest.hexdigest()[:24]


def _tokenize_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "labels": [], "status": []}
    for text in batch["conversation"]:
        r = render(Conversation.from_json(text), tokenizer, cfg.thinking, cfg.train_on)
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


def tokenize(convs: list[Conversation], tokenizer, cfg: DataConfig, cache_root: Path, split: str):
    """Render and tokenize conversations (several processes for big sets), reusing the on-disk cache."""
    import datasets

    path = cache_root / f"{_fingerprint(cfg, tokenizer, convs)}-{split}"
    if (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    raw = datasets.Dataset.from_dict({"conversation": [c.to_json() for c in convs]})
    num_proc = cfg.num_proc or (min(os.cpu_count() or 1, 8) if len(convs) > MULTIPROCESS_ABOVE else None)
    tokenized = raw.map(
        _tokenize_batch, batched=True, fn_kwargs={"tokenizer": tokenizer, "cfg": cfg},
        remove_columns=["conversation"], num_proc=num_proc, desc=f"tokenizing {split}",
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tokenized.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def _keep_ok(ds, dropped: Counter):
    statuses = Counter(ds["status"])
    dropped.update({k: v for k, v in statuses.items() if k not in ("ok", "truncated")})
    if statuses.get("truncated"):
        dropped["truncated (kept)"] += statuses["truncated"]
    kept = ds.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
    return kept.remove_columns("status")


def prepare(cfg: DataConfig, tokenizer, log=print) -> Prepared:
    """Load, convert, mix, split, render and tokenize; drop and count samples that cannot be trained."""
    train_convs, val_convs = build_conversations(cfg, log)
    cache_root = Path(cfg.cache_dir or Path.home() / ".cache" / "tuneforge" / "data")
    prepared = Prepared(train=None, validation=None)
    prepared.train = _keep_ok(tokenize(train_convs, tokenizer, cfg, cache_root, "train"), prepared.dropped)
    if val_convs:
        prepared.validation = _keep_ok(tokenize(val_convs, tokenizer, cfg, cache_root, "validation"), prepared.dropped)
    if prepared.dropped:
        log("data: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in sorted(prepared.dropped.items())))
    if len(prepared.train) == 0:
        reason = (
            f"every sample is longer than data.max_length={cfg.max_length}; raise it or set data.truncation: truncate"
            if prepared.dropped.get("too_long") else "no sample has a trained token"
        )
        raise UserError(f"data: no training samples left: {reason}")
    lengths = [len(x) for x in prepared.train["input_ids"]]
    log(f"data: {len(lengths)} training samples, {sum(lengths)} tokens, longest {max(lengths)}, "
        f"mean {sum(lengths) / len(lengths):.0f}")
    return prepared
