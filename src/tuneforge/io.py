"""Atomic writes: nothing already written is lost, and no half-written file carries a final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the modes a plain write would."""
    os.chmod(path, mode & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publishable(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON (UTF-8, indented) atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _publishable(tmp, 0o777)
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise FileExistsError(path)
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, path: Path) -> None:
    """Give the complete folder `tmp` the name `path`, replacing what is there (kept as `.NAME.old` meanwhile)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Clear what a killed atomic write of `path` left beside it; returns what was removed or restored.

    Its `.NAME.*.tmp` files and folders were never complete, so they go. A `.NAME.old` left between
    `atomic_dir`'s two renames is the previous version: it is put back if `path` is missing, else removed.
    Call it only where no other command is writing `path` at the same time.
    """
    cleared = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        cleared.append(tmp)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
        cleared.append(old)
    return cleared


def check_writable(path: Path, what: str, folder: bool) -> None:
    """Fail before any work, naming `what`, where `path` cannot be written as a folder (or as a file)."""
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is an existing file, not a folder; choose a folder path")
    if not folder and path.is_dir():
        raise UserError(f"{what}: {path} is a folder; give a file path, e.g. {path / 'out'}")
    # A real probe, not os.access: access() ignores read-only mounts for root and ACLs elsewhere.
    where = path if path.is_dir() else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise UserError(
            f"{what}: cannot write to {where} ({exc.strerror}); choose another path or fix its permissions"
        ) from None
