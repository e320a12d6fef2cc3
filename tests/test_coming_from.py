"""Every row of docs/coming-from.md's LLaMA-Factory and ms-swift tables: its example imports as the row says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import UserError
from tuneforge.importers.convert import import_config
from tuneforge.importers.llamafactory import UNKNOWN

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "coming-from.md").read_text(encoding="utf-8")
INFO = ROOT / "tests" / "data" / "llamafactory" / "data" / "dataset_info.json"
LF_BASE = {"model_name_or_path": "Qwen/Qwen3-0.6B", "stage": "sft", "dataset": "identity", "output_dir": "out"}
SWIFT_BASE = "--model Qwen/Qwen3-8B --dataset AI-ModelScope/alpaca-gpt4-data-en"
SWIFT_PREFERENCE = "--model Qwen/Qwen3-8B --dataset hjh0119/shareAI-Llama3-DPO-zh-en-emoji"


def rows(marker: str) -> list[tuple[list[str], str, str, str]]:
    """(source names, example, tuneforge, status) of each row between <!-- marker --> and <!-- /marker -->."""
    table = DOC.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    out = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        out.append((names, cells[1].strip("`"), cells[2].strip("`"), cells[3]))
    return out


def _check(report_or_error, key: str, target: str, status: str) -> None:
    if status == "refused":
        assert isinstance(report_or_error, UserError), f"{key}: imported, expected a refusal"
        assert f"{key}: " in str(report_or_error) and target in str(report_or_error), str(report_or_error)
        return
    assert not isinstance(report_or_error, UserError), f"{key}: {report_or_error}"
    entry = next(e for e in report_or_error.entries if e.key == key)
    assert entry.status == status, (key, entry)
    assert target in entry.target, (key, entry)


def _import(path: Path, tool=None):
    try:
        return import_config(path, tool, dataset_info=INFO)[2]
    except UserError as exc:
        return exc


LF_ROWS = rows("llamafactory-table")
SWIFT_ROWS = rows("swift-table")


def test_tables_have_rows():
    assert len(LF_ROWS) >= 60 and len(SWIFT_ROWS) >= 35


@pytest.mark.parametrize("names, example, target, status", LF_ROWS, ids=[r[1] for r in LF_ROWS])
def test_llamafactory_row(names, example, target, status, tmp_path):
    extra = yaml.safe_load(example)
    key = next((n for n in names if n in extra), None) or next(k for k in extra if k not in LF_BASE)
    path = tmp_path / "lf.yaml"
    path.write_text(yaml.safe_dump({**LF_BASE, **extra}))
    result = _import(path)
    _check(result, key, target, status)
    if not isinstance(result, UserError):
        entry = next(e for e in result.entries if e.key == key)
        assert (entry.note == UNKNOWN) == (not names), entry  # only the "any other key" row is unknown


@pytest.mark.parametrize("names, example, target, status", SWIFT_ROWS, ids=[r[1] for r in SWIFT_ROWS])
def test_swift_row(names, example, target, status, tmp_path):
    env = re.match(r"^([A-Z_]+)=(\S+)$", example)
    if env:
        key, line = f"env.{env[1]}", f"{example} swift sft {SWIFT_BASE}"
    else:
        options = [n for n in names if re.search(rf"{re.escape(n)}(\s|=|$)", example)]
        key = options[0].removeprefix("--")
        rlhf = example.startswith("rlhf ")
        args = example.removeprefix("rlhf ")
        line = f"swift rlhf {SWIFT_PREFERENCE} {args}" if rlhf else f"swift sft {SWIFT_BASE} {args}"
    path = tmp_path / "train.sh"
    path.write_text(line + "\n")
    _check(_import(path, "swift"), key, target, status)
