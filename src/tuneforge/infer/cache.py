"""Finished eval items, kept so that a rerun after a kill (or with more tasks) recomputes nothing already done.

An item is one engine request for one model: a generation (rendered prompt + decoding), the letter log-probs of a
multiple-choice prompt, the token log-probs of a held-out conversation. Its key hashes the request with the
model's fingerprint (base weights, adapter, load settings), so a retrained adapter or changed decoding is a miss.

    RUN/eval/.cache/items.jsonl     {"key": "<sha256>", "value": ...}  one line per item

Items are computed a chunk at a time and the chunk's lines are appended in one write, flushed to disk before the
next chunk starts: a kill loses at most the chunk in flight. A torn last line (killed inside the write) is cut
off when the cache is opened, so the next append starts on a fresh line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.rundir import fingerprint

if TYPE_CHECKING:
    from tuneforge.infer.spec import ModelSpec

CHUNK = 32  # items computed between two appends: big enough to fill the engine's batches, small enough to lose


class ItemCache:
    """Cached item results by (model fingerprint, request); `path` None keeps nothing (every item is computed)."""

    def __init__(self, path: Path | None, fingerprints: dict[str, str], chunk: int = CHUNK) -> None:
        self.path = path
        self.fingerprints = fingerprints  # served model name -> fingerprint
        self.chunk = chunk
        self.values: dict[str, Any] = _read(path) if path is not None else {}

    def map(self, kind: str, items: Sequence[tuple[str, Any]], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """The value of every (served model name, request) item: cached ones read, the others computed.

        `compute(indices)` returns the values of those items (JSON-serializable), in that order.
        """
        if self.path is None:
            return compute(list(range(len(items))))
        keys = [self._key(kind, name, request) for name, request in items]
        todo = [i for i, key in enumerate(keys) if key not in self.values]
        for start in range(0, len(todo), self.chunk):
            batch = todo[start : start + self.chunk]
            computed = dict(zip((keys[i] for i in batch), compute(batch)))
            self._append(computed)
            self.values.update(computed)
        return [self.values[key] for key in keys]

    def _key(self, kind: str, name: str, request: Any) -> str:
        text = json.dumps([kind, self.fingerprints[name], request], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _append(self, values: dict[str, Any]) -> None:
        lines = "".join(json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n" for k, v in values.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def _read(path: Path) -> dict[str, Any]:
    """{key: value} of the complete lines of a cache file; a torn last line is cut off the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        os.truncate(path, len(whole))
    values = {}
    for line in whole.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line damaged some other way: its item is computed again
            continue
        values[entry["key"]] = entry["value"]
    return values


def model_fingerprints(spec: ModelSpec) -> dict[str, str]:
    """A fingerprint per served name: the weights' files (or hub id and revision) and load settings, + its adapter."""

    def weights(model: Any) -> str:
        folder = Path(model.name_or_path)
        where = fingerprint(folder) if folder.exists() else f"{model.name_or_path}@{model.revision}"
        return f"{where}:{model.model_dump_json()}"

    base = weights(spec.model) + (f":{spec.quantize.model_dump_json()}" if spec.quantize else "")
    prints = {spec.name: base}
    prints.update({name: f"{base}+{fingerprint(folder)}" for name, folder in spec.adapters.items()})
    prints.update({name: weights(model) for name, model in spec.others.items()})
    return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in prints.items()}
