"""LLaMA-Factory's `dataset:` names, resolved through its dataset_info.json, as tuneforge `data.datasets` entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.data.formats import SHAREGPT_ROLES
from tuneforge.errors import UserError
from tuneforge.importers.report import ImportReport

# LLaMA-Factory's column names (DatasetAttr in llamafactory/data/parser.py) → tuneforge's, per tuneforge format.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
ALPACA_COLUMNS |= {"history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
RANKING_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"}
RANKING_COLUMNS |= {"tools": "tools"}
PREFERENCE_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"}
KTO_COLUMNS = {"prompt": "prompt", "response": "completion", "kto_tag": "label", "system": "system"}
OPENAI_COLUMNS = {"messages": "messages", "tools": "tools"}
MEDIA_COLUMNS = ("images", "videos", "audios")
# sharegpt tags → the role tuneforge reads each tag value as (data/formats.py SHAREGPT_ROLES).
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


def read_dataset_info(path: Path) -> dict[str, Any]:
    """dataset_info.json as a mapping, with a one-line error for a missing or broken file."""
    if not path.is_file():
        raise UserError(f"{path}: dataset_info.json not found; pass --dataset-info FILE (LLaMA-Factory's data/ folder)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a mapping of dataset names")
    return info


def _format(entry: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """tuneforge's format for a dataset_info entry, and its LLaMA-Factory → tuneforge column names."""
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns", {})
    if "kto_tag" in columns:
        return ("kto", KTO_COLUMNS) if formatting == "alpaca" else ("sharegpt_kto", {})
    if entry.get("ranking"):
        return ("ranking", RANKING_COLUMNS) if formatting == "sharegpt" else ("preference", PREFERENCE_COLUMNS)
    return {
        "alpaca": ("alpaca", ALPACA_COLUMNS),
        "sharegpt": ("sharegpt", SHAREGPT_COLUMNS),
        "openai": ("messages", OPENAI_COLUMNS),
    }.get(formatting, (formatting, {}))


def _columns(name: str, entry: dict[str, Any], fmt: str, names: dict[str, str], report: ImportReport) -> dict[str, str]:
    """tuneforge `columns:` for the entry's columns and tags; unsupported ones are refusals."""
    out: dict[str, str] = {}
    key = f"dataset_info.{name}"
    for lf_name, column in entry.get("columns", {}).items():
        if lf_name in MEDIA_COLUMNS:
            report.refuse(
                f"{key}.columns.{lf_name}",
                column,
                "multimodal data (images, videos, audio): tuneforge trains text-only models",
            )
        elif lf_name not in names:
            report.refuse(
                f"{key}.columns.{lf_name}", column, f"column '{lf_name}' has no place in tuneforge's {fmt} format"
            )
        else:
            if column != names[lf_name]:
                out[names[lf_name]] = column
            report.add(f"{key}.columns.{lf_name}", column, "mapped", f"columns.{names[lf_name]}")
    for tag, value in entry.get("tags", {}).items():
        if tag in ("role_tag", "content_tag"):
            tf = tag.removesuffix("_tag")
            if value != {"role": "from", "content": "value"}[tf]:
                out[tf] = value
            report.add(f"{key}.tags.{tag}", value, "mapped", f"columns.{tf}")
        elif SHAREGPT_ROLES.get(value) == TAG_ROLES.get(tag):
            report.add(
                f"{key}.tags.{tag}", value, "noted", "", f"tuneforge reads '{value}' as the {TAG_ROLES[tag]} role"
            )
        else:
            report.refuse(
                f"{key}.tags.{tag}",
                value,
                f"role name '{value}' is not one tuneforge reads as "
                f"{TAG_ROLES.get(tag, tag)} (data/formats.py SHAREGPT_ROLES)",
            )
    return out


def _location(name: str, entry: dict[str, Any], dataset_dir: Path, report: ImportReport) -> dict[str, Any]:
    """path and source of one entry: a file under dataset_dir, or a hub id."""
    key = f"dataset_info.{name}"
    if "file_name" in entry and not {"hf_hub_url", "ms_hub_url", "om_hub_url"} & entry.keys():
        path = dataset_dir / entry["file_name"]
        report.add(f"{key}.file_name", entry["file_name"], "mapped", "path", f"{path} (dataset_dir joined)")
        return {"path": str(path)}
    if "file_name" in entry:
        report.add(
            f"{key}.file_name", entry["file_name"], "dropped", "path", "the hub copy is used, as in LLaMA-Factory"
        )
    if "hf_hub_url" in entry:
        report.add(f"{key}.hf_hub_url", entry["hf_hub_url"], "mapped", "path, source: huggingface")
        for other in ("ms_hub_url", "om_hub_url"):
            if other in entry:
                report.add(
                    f"{key}.{other}",
                    entry[other],
                    "dropped",
                    "path, source: modelscope",
                    "Hugging Face is used, as LLaMA-Factory does unless USE_MODELSCOPE_HUB is set",
                )
        return {"path": entry["hf_hub_url"], "source": "huggingface"}
    if "ms_hub_url" in entry:
        report.add(f"{key}.ms_hub_url", entry["ms_hub_url"], "mapped", "path, source: modelscope")
        return {"path": entry["ms_hub_url"], "source": "modelscope"}
    for other in ("om_hub_url", "script_url", "cloud_file_name"):
        if other in entry:
            report.refuse(
                f"{key}.{other}",
                entry[other],
                "only local files, Hugging Face and ModelScope datasets are "
                "read; download it and point file_name at it",
            )
            return {"path": str(entry[other])}
    report.refuse(key, entry, "no file_name, hf_hub_url or ms_hub_url")
    return {"path": name}


def resolve_dataset(name: str, info: dict[str, Any], dataset_dir: Path, report: ImportReport) -> dict[str, Any]:
    """One tuneforge dataset entry for a LLaMA-Factory dataset name; every entry key is reported."""
    if name not in info:
        report.refuse("dataset", name, "not defined in dataset_info.json (pass the right --dataset-info)")
        return {"path": name}
    entry = info[name]
    key = f"dataset_info.{name}"
    ds = _location(name, entry, dataset_dir, report)
    fmt, names = _format(entry)
    if fmt == "sharegpt_kto":
        report.refuse(
            f"{key}.columns.kto_tag",
            entry["columns"]["kto_tag"],
            "kto labels on sharegpt messages: tuneforge's kto format reads prompt / completion / label columns",
        )
    elif not names:
        report.refuse(f"{key}.formatting", entry.get("formatting"), "unknown formatting (alpaca, sharegpt, openai)")
    else:
        ds["format"] = fmt
        report.add(f"{key}.formatting", entry.get("formatting", "alpaca"), "mapped", f"format: {fmt}")
        if "ranking" in entry:
            report.add(f"{key}.ranking", entry["ranking"], "mapped", f"format: {fmt}")
        columns = _columns(name, entry, fmt, names, report)
        if columns:
            ds["columns"] = columns
    for extra in ("subset", "split"):
        if extra in entry:
            ds[extra] = entry[extra]
            report.add(f"{key}.{extra}", entry[extra], "mapped", extra)
    if "num_samples" in entry:
        ds["max_samples"] = entry["num_samples"]
        report.add(
            f"{key}.num_samples",
            entry["num_samples"],
            "noted",
            "max_samples",
            "LLaMA-Factory samples this many (repeating a smaller set); tuneforge keeps at most this many",
        )
    if "folder" in entry:
        report.refuse(f"{key}.folder", entry["folder"], "a sub-folder of a hub dataset; download it and use file_name")
    return ds
