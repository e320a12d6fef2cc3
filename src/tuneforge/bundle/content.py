"""What a bundle carries besides wheels: model snapshots, datasets, evaluation data and configs, found locally."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuneforge.errors import UserError

HF_CACHE = "hf-cache"  # the bundle's Hugging Face hub cache: HF_HUB_CACHE points here, so hub ids load offline


def copy_model(source: str, bundle: Path) -> str:
    """Copy a model (folder, or hub id from the Hugging Face or ModelScope cache) into the bundle; its name there."""
    folder = Path(source)
    if folder.is_dir():
        _check_model(folder, source)
        target = bundle / "models" / folder.resolve().name
        _copy(folder, target)
        return target.relative_to(bundle).as_posix()
    snapshot = _hf_snapshot(source, "model")
    if snapshot is not None:
        _check_model(snapshot, source)
        return _copy_snapshot(snapshot, source, "model", bundle)
    modelscope = _modelscope_snapshot(source)
    if modelscope is not None:
        _check_model(modelscope, source)
        target = bundle / "models" / source.replace("/", "--")
        _copy(modelscope, target)
        return target.relative_to(bundle).as_posix()
    raise UserError(
        f"model {source}: not a folder and not in the Hugging Face cache ({_hf_cache_dir()}) or the ModelScope "
        f"cache ({_modelscope_dir()}): run `hf download {source}` (or `modelscope download --model {source}`) "
        "while online, or pass the model's folder"
    )


def copy_dataset(source: str, bundle: Path) -> str:
    """Copy a dataset (file, folder, or hub id from the Hugging Face cache) into the bundle; its path there."""
    path = Path(source)
    if path.exists():
        target = bundle / "data" / path.resolve().name
        _copy(path, target)
        return target.relative_to(bundle).as_posix()
    snapshot = _hf_snapshot(source, "dataset")
    if snapshot is None:
        raise UserError(
            f"dataset {source}: not a file or folder and not in the Hugging Face cache ({_hf_cache_dir()}): run "
            f"`hf download {source} --repo-type dataset` while online, or pass the file"
        )
    return _copy_snapshot(snapshot, source, "dataset", bundle)


def copy_tree(source: Path, bundle: Path, under: str) -> str:
    """Copy a file or folder (evaluation data, a config) under `under/` in the bundle; its path there."""
    if not source.exists():
        raise UserError(f"{source}: not found; pass an existing file or folder")
    target = bundle / under / source.resolve().name
    _copy(source, target)
    return target.relative_to(bundle).as_posix()


def size_of(sources: list[str]) -> int:
    """Bytes the local sources (folders, files, cached snapshots) hold; hub ids not cached count 0."""
    total = 0
    for source in sources:
        path = Path(source)
        if not path.exists():
            path = _hf_snapshot(source, "model") or _hf_snapshot(source, "dataset") or Path("/nonexistent")
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def _check_model(folder: Path, source: str) -> None:
    # The same checks as `tuneforge env --offline-check --model`, before anything is copied.
    from tuneforge.env import model_problems

    problems = [p for p in model_problems(str(folder)) if "no weights" not in p]
    if problems:
        raise UserError(f"model {source}: {problems[0]}")


def _hf_snapshot(repo_id: str, repo_type: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        return None


def _copy_snapshot(snapshot: Path, repo_id: str, repo_type: str, bundle: Path) -> str:
    # The hub cache's own layout (refs/main → snapshots/REV), with the blobs' contents in place of their links, so
    # HF_HUB_CACHE=BUNDLE/hf-cache and HF_HUB_OFFLINE=1 load the same id on the offline machine.
    repo = bundle / HF_CACHE / f"{repo_type}s--{repo_id.replace('/', '--')}"
    revision = snapshot.name
    _copy(snapshot, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    return repo_id


def _modelscope_dir() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))


def _modelscope_snapshot(model_id: str) -> Path | None:
    for folder in (_modelscope_dir() / "models" / model_id, _modelscope_dir() / model_id):
        if (folder / "config.json").is_file():
            return folder
    return None


def _hf_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def _copy(source: Path, target: Path) -> None:
    if target.exists():
        raise UserError(f"{source}: another source is already bundled as {target.name}; rename one of them")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        # Links are followed: the hub cache's snapshots link to blobs that the bundle must hold themselves.
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".cache", "__pycache__"))
    else:
        shutil.copy2(source, target)
