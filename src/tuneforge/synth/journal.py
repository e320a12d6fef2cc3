"""The append-only journal of finished requests: one JSON line each, fsynced before the reply is used.

Keyed by (chunk id, step, prompt hash, model): a request whose reply is in any journal of the output folder is
never sent again, so a run killed at any moment (kill -9 included) and run again loses nothing and pays for
nothing twice. Shards write their own file (`journal/shard-I-of-N.jsonl`); every run reads them all, which is
how the journals of several machines merge. A line torn by a kill is cut off before the next append.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError


def request_key(chunk: str, step: str, messages: list[dict[str, Any]], model: str) -> str:
    """The journal key of one request: its chunk, step, the hash of the exact messages sent, and the model."""
    prompt = hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
    return f"{chunk}:{step}:{prompt}:{model}"


class Journal:
    """Finished replies of every journal in `folder`; new ones are appended to this shard's file."""

    def __init__(self, folder: Path, shard: tuple[int, int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ("journal.jsonl" if shard[1] == 1 else f"shard-{shard[0]}-of-{shard[1]}.jsonl")
        self.path.touch()
        self._file = self.path.open("r+b")
        try:
            # One writer per journal file: a second run on the same folder would interleave lines.
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise UserError(f"{self.path}: another synth run is writing this journal; wait for it or stop it") from None
        _cut_torn_tail(self._file)
        self._written = self._synced = 0  # lines appended by this run, and how many of them are fsynced
        self._syncing: asyncio.Future | None = None
        self.entries: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # another shard's torn last line (its own run cuts it)
                self.entries[entry["key"]] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        """The finished reply of a request, or None."""
        return self.entries.get(key)

    async def append(self, entry: dict[str, Any]) -> None:
        """Record a finished reply durably: it returns once the line is fsynced."""
        self._file.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        self._written += 1
        self.entries[entry["key"]] = entry
        await self._sync(self._written)

    async def _sync(self, line: int) -> None:
        """Wait until line number `line` is on disk. Group commit: one fsync, off the event loop, covers every
        line written before it started, so 64 replies arriving together cost one disk flush, not 64 in a row."""
        while self._synced < line:
            if self._syncing is not None and self._syncing.done():
                self._synced = max(self._synced, self._syncing.result())  # an fsync error is raised here
                self._syncing = None
            elif self._syncing is None:
                self._syncing = asyncio.ensure_future(asyncio.to_thread(_fsync, self._file.fileno(), self._written))
            else:
                await self._syncing  # every pass either waits or changes the state: no busy loop

    def close(self) -> None:
        """Release the file (and its lock)."""
        self._file.close()


def _cut_torn_tail(file: Any) -> None:
    """Drop a last line without its newline (a kill mid-write), so the next append starts a fresh line."""
    data = file.read()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        file.truncate(end)
    file.seek(end)


def _fsync(fd: int, upto: int) -> int:
    """fsync `fd` and return `upto`, the count of lines this call makes durable."""
    os.fsync(fd)
    return upto
