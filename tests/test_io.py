"""Atomic writes and what a killed write leaves behind (removed, or put back, by the next command)."""

from __future__ import annotations

import pytest

from tuneforge.errors import UserError
from tuneforge.export import refuse_existing
from tuneforge.io import atomic_dir, remove_stale_temporaries
from tuneforge.rundir import Run


def test_a_failed_atomic_dir_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_a_killed_export_are_removed_before_the_next(tmp_path):
    gguf = tmp_path / "gguf" / "run-q4_k_m.gguf"
    gguf.parent.mkdir()
    (gguf.parent / ".run-q4_k_m.gguf.1a2b3c4d.tmp").write_bytes(b"GGUF half")  # gguf.py's temporary
    (gguf.parent / ".run-q4_k_m.gguf.tmpname.tmp").mkdir()
    unrelated = [gguf.parent / "notes.tmp", gguf.parent / ".other.gguf.x.tmp", gguf.parent / ".run-q4_k_m.ggufx.tmp"]
    for path in unrelated:
        path.write_text("keep")

    refuse_existing(gguf, force=False)  # what merge, export gguf and export ollama call first

    assert sorted(p.name for p in gguf.parent.iterdir()) == sorted(p.name for p in unrelated)


def test_an_old_copy_is_put_back_when_the_replacement_never_got_its_name(tmp_path):
    # Killed between atomic_dir's two renames: the previous merge is `.merged.old`, the new one a temporary.
    merged = tmp_path / "merged"
    (tmp_path / ".merged.old").mkdir()
    (tmp_path / ".merged.old" / "model.safetensors").write_text("previous")
    (tmp_path / ".merged.k1ll3d.tmp").mkdir()

    with pytest.raises(UserError, match="merged already exists; pass --force to replace it"):
        refuse_existing(merged, force=False, folder=True)  # as merge calls it
    assert (merged / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_an_old_copy_beside_its_replacement_is_removed(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / ".adapter.old").mkdir()
    assert remove_stale_temporaries(tmp_path / "adapter") == [tmp_path / ".adapter.old"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_run_folder_is_cleared_of_unfinished_checkpoints_and_temporaries(tmp_path):
    run = Run(tmp_path)
    (run.checkpoints / "checkpoint-3").mkdir(parents=True)
    (run.checkpoints / ".checkpoint-6.staging.tmp" / "checkpoint-6").mkdir(parents=True)
    (tmp_path / ".summary.json.abcd1234.tmp").write_text("{")
    (tmp_path / ".loss.png.efgh5678.tmp").write_bytes(b"\x89PNG")

    cleared = run.clear_interrupted_writes()

    assert sorted(p.name for p in cleared) == [
        ".checkpoint-6.staging.tmp",
        ".loss.png.efgh5678.tmp",
        ".summary.json.abcd1234.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert [p.name for p in run.checkpoints.iterdir()] == ["checkpoint-3"]
