"""`tuneforge download`: fetch a model or dataset ahead of time, so a later run or bundle needs no network.

Hugging Face through huggingface_hub's snapshot_download (resumes partial files, honours HF_ENDPOINT, HF_HOME,
HF_HUB_CACHE and HF_TOKEN), ModelScope through modelscope's (MODELSCOPE_CACHE, MODELSCOPE_DOMAIN) when installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tuneforge.errors import UserError

Kind = Literal["auto", "model", "dataset"]
Hub = Literal["huggingface", "modelscope"]


def _huggingface(repo_id: str, kind: str, revision: str | None, cache_dir: Path | None, local_dir: Path | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return snapshot_download(repo_id, repo_type=kind, revision=revision, cache_dir=cache_dir, local_dir=local_dir)
    except RepositoryNotFoundError:
        raise LookupError(repo_id) from None


def _modelscope(repo_id: str, kind: str, revision: str | None, cache_dir: Path | None, local_dir: Path | None) -> str:
    try:
        from modelscope.hub.snapshot_download import dataset_snapshot_download, snapshot_download
    except ImportError:
        raise UserError("--hub modelscope needs the modelscope package: pip install 'tuneforge[modelscope]'") from None
    fetch = snapshot_download if kind == "model" else dataset_snapshot_download
    kwargs = {"revision": revision} if revision else {}
    try:
        return fetch(repo_id, cache_dir=cache_dir and str(cache_dir), local_dir=local_dir and str(local_dir), **kwargs)
    except Exception as exc:  # modelscope raises many types; a missing repository is one of them
        if "404" in str(exc) or "not exist" in str(exc).lower():
            raise LookupError(repo_id) from None
        raise


def download(
    repo_id: str,
    kind: Kind = "auto",
    hub: Hub = "huggingface",
    revision: str | None = None,
    cache_dir: Path | None = None,
    local_dir: Path | None = None,
) -> tuple[str, Path]:
    """Fetch every file of a model or dataset repository; returns (its kind, the local folder)."""
    fetch = _huggingface if hub == "huggingface" else _modelscope
    kinds = ("model", "dataset") if kind == "auto" else (kind,)
    for candidate in kinds:
        try:
            return candidate, Path(fetch(repo_id, candidate, revision, cache_dir, local_dir))
        except LookupError:
            continue
        except UserError:
            raise
        except Exception as exc:  # network, authentication, disk: one line naming the cause
            raise UserError(f"{repo_id}: download from {hub} failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    raise UserError(
        f"{repo_id}: no {' or '.join(kinds)} repository of that name on {hub}; check the id (org/name), "
        f"--hub, and HF_ENDPOINT / HF_TOKEN for mirrors and private repositories"
    )


def config_hint(repo_id: str, kind: str, hub: str, folder: Path, local_dir: Path | None) -> str:
    """The config lines that use what was downloaded."""
    if kind == "model":
        if local_dir is not None:
            return f"model.name_or_path: {folder}"
        hub_line = "" if hub == "huggingface" else f", model.hub: {hub}"
        return f"model.name_or_path: {repo_id}{hub_line} (read from the cache; HF_HUB_OFFLINE=1 needs no network)"
    return f"data.datasets: [{{path: {folder}}}] (a folder of json / jsonl / csv / parquet files)"
