"""What the Train tab's pickers offer (models, data files, presets) and what a chosen dataset holds.

Each list comes from its owner: the Qwen3 family from the estimator's known shapes, data file suffixes from
data/sources.py, presets from examples/ and the run folders; a dataset is read by data/ exactly as training reads it.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneforge.config import DatasetConfig, MethodConfig, ModelConfig, describe_validation, looks_like_path, read_yaml
from tuneforge.errors import UserError
from tuneforge.rundir import Run
from tuneforge.webui.jobs import list_runs

MAX_LISTED = 500  # entries a picker lists from one folder (a data lake stays usable)


def model_choices(models_dir: Path | None) -> list[str]:
    """Local model folders (a config.json in them, one or two levels under `models_dir`), then the Qwen3 family."""
    from tuneforge.estimate.shapes import QWEN3_SHAPES

    local: list[str] = []
    if models_dir is not None and models_dir.is_dir():
        found = [*models_dir.glob("*/config.json"), *models_dir.glob("*/*/config.json")]
        local = sorted(str(p.parent.resolve()) for p in found)[:MAX_LISTED]
    return [*local, *QWEN3_SHAPES]


def data_choices(data_dir: Path | None, hub_ids: list[str]) -> list[str]:
    """Data files (the suffixes training reads) under `data_dir`, then the hub dataset ids the presets use."""
    from tuneforge.data.sources import SUFFIXES

    files: list[str] = []
    if data_dir is not None and data_dir.is_dir():
        files = sorted(str(p.resolve()) for p in data_dir.rglob("*") if p.suffix.lower() in SUFFIXES)[:MAX_LISTED]
    return [*files, *dict.fromkeys(hub_ids)]


def default_examples() -> Path | None:
    """The examples/ folder of a source checkout (the presets), when tuneforge runs from one."""
    folder = Path(__file__).resolve().parents[3] / "examples"
    return folder if folder.is_dir() else None


def presets(examples_dir: Path | None, runs_dir: Path) -> list[tuple[str, str]]:
    """(label, config file) of each example (its first comment line) and of each earlier run ("again: NAME")."""
    found = []
    for path in sorted(examples_dir.glob("*.yaml")) if examples_dir is not None else []:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        found.append((first.lstrip("# ").rstrip(".") if first.startswith("#") else path.stem, str(path)))
    for folder in list_runs(runs_dir):
        run = Run(folder)
        config = run.job_config if run.job_config.is_file() else run.config_file  # as typed, else as resolved
        if config.is_file():
            found.append((f"again: {folder.name}", str(config)))
    return found


def preset_config(path: str, runs_dir: Path) -> dict[str, Any]:
    """A preset's config mapping with its output.dir moved to a new folder under `runs_dir` (same name, or NAME-2…)."""
    raw = read_yaml(path)
    name = Path(str((raw.get("output") or {}).get("dir") or "run")).name
    target, n = runs_dir / name, 1
    while target.exists():
        n += 1
        target = runs_dir / f"{name}-{n}"
    raw.setdefault("output", {})["dir"] = str(target)
    return raw


def hub_datasets(preset_files: list[str]) -> list[str]:
    """The hub dataset ids the presets train on (local paths left out)."""
    ids = []
    for path in preset_files:
        for ds in (read_yaml(path).get("data") or {}).get("datasets") or []:
            if isinstance(ds, dict) and isinstance(ds.get("path"), str) and not looks_like_path(ds["path"]):
                ids.append(ds["path"])
    return ids


def dataset_summary(raw: dict[str, Any]) -> str:
    """HTML: a config mapping's first dataset's record count, format and first sample (rendered with the model's
    chat template when the model is a local folder), read by data/ as training reads it."""
    datasets = (raw.get("data") or {}).get("datasets") or []
    if not datasets or not isinstance(datasets[0], dict) or not datasets[0].get("path"):
        return ""
    path = Path(str(datasets[0]["path"])).expanduser()
    if datasets[0].get("source", "auto") not in ("auto", "local") or not path.exists():
        return f"<p><code>{html.escape(str(datasets[0]['path']))}</code>: a hub dataset, read when training starts</p>"
    # Read again only when what it depends on changed (the form asks at every keystroke).
    wanted = {"dataset": datasets[0], "model": raw.get("model"), "method": raw.get("method"), "data": raw.get("data")}
    return _summary(json.dumps(wanted, sort_keys=True, default=str), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _summary(wanted_json: str, _mtime_ns: int) -> str:
    from tuneforge.data.formats import detect_format
    from tuneforge.data.sources import load_conversations, messages_view, raw_records
    from tuneforge.objective import Objective

    raw = json.loads(wanted_json)
    model = raw.get("model") or {}
    local = Path(str(model.get("name_or_path", ""))).is_dir()
    try:
        ds = DatasetConfig.model_validate(raw["dataset"])
        model_cfg = ModelConfig.model_validate(model) if local else None
        objective = Objective.of(MethodConfig.model_validate(raw.get("method") or {}))
    except ValidationError as exc:
        raise UserError(describe_validation(exc, "form")) from None
    notes: list[str] = []
    samples = load_conversations(ds, log=notes.append, objective=objective)
    fmt = ds.format if ds.format != "auto" else detect_format(next(raw_records(ds)).record, ds.columns)
    head = f"<p><b>{len(samples)}</b> records · format <b>{fmt}</b></p>"
    warnings = "".join(f"<p>⚠️ {html.escape(n)}</p>" for n in notes if n.startswith("warning"))
    first = messages_view(samples[0])
    if model_cfg is not None:  # as the model's chat template renders it
        from tuneforge.data.render import render
        from tuneforge.model.load import load_tokenizer

        shown = render(first, load_tokenizer(model_cfg), (raw.get("data") or {}).get("thinking", "auto")).text
    else:
        shown = "\n".join(f"{m.role}: {m.content}" for m in first.messages)
    return head + warnings + f"<pre class='sample'>{html.escape(shown)}</pre>"
