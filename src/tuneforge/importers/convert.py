"""`tuneforge config import`: read another tool's config or command line, write a validated tuneforge config and
the report of every key beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from tuneforge.config import Config, apply_overrides, read_yaml, validate
from tuneforge.errors import UserError
from tuneforge.importers.draft import Draft, parse_command
from tuneforge.importers.report import ImportReport, report_paths
from tuneforge.io import atomic_write_text

Tool = Literal["llamafactory", "swift"]
TOOLS: tuple[Tool, ...] = ("llamafactory", "swift")
# Command lines the importer reads, by their leading words → (tool, kind of run).
PROGRAMS = {
    ("llamafactory-cli", "train"): "llamafactory",
    ("swift", "sft"): "swift sft",
    ("swift", "rlhf"): "swift rlhf",
}


def read_source(path: Path, tool: Tool | None) -> tuple[Tool, dict[str, Any]]:
    """The tool a file belongs to (named, or told by its content) and its arguments as a mapping."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if tool == "swift":
            raise UserError(f"{path}: --from swift reads a `swift sft` / `swift rlhf` command line, not a YAML file")
        return "llamafactory", read_yaml(path)
    try:
        kind, args = parse_command(path.read_text(encoding="utf-8"), PROGRAMS)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    found: Tool = "llamafactory" if kind == "llamafactory" else "swift"
    if tool is not None and tool != found:
        raise UserError(f"{path}: --from {tool}, but the command line is {found}'s; drop --from or fix the file")
    if found == "swift":
        args["__kind"] = kind.split()[1]
    return found, args


def import_config(
    path: Path, tool: Tool | None = None, dataset_info: Path | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], Config, ImportReport]:
    """The tuneforge mapping for another tool's file, validated (with `overrides` applied), and the report."""
    tool, args = read_source(path, tool)
    report = ImportReport(str(path), "LLaMA-Factory" if tool == "llamafactory" else "ms-swift")
    if tool == "llamafactory":
        from tuneforge.importers.llamafactory import import_llamafactory

        draft = Draft(report, args)
        import_llamafactory(draft, dataset_info)
    else:
        from tuneforge.importers.swift import import_swift

        kind = args.pop("__kind")
        draft = Draft(report, args)
        import_swift(draft, kind)
    report.raise_refusals()
    raw = apply_overrides(_pruned(draft.raw), list(overrides or []))
    for item in overrides or []:
        key, _, value = item.partition("=")
        report.add(f"--set {key}", value, "mapped", key, "set on the command line")
    return raw, validate(raw, f"{path} (imported)"), report


def _pruned(raw: dict[str, Any]) -> dict[str, Any]:
    """The mapping without empty sections (tuneforge's defaults apply there)."""
    return {k: v for k, v in raw.items() if v not in ({}, None)}


def write_import(raw: dict[str, Any], report: ImportReport, out: Path) -> tuple[Path, Path]:
    """Write the config and, beside it, the report as Markdown and JSON (atomically); returns the report paths."""
    header = f"# Imported from {report.tool} ({report.source}) by `tuneforge config import`; see the report beside it.\n"
    atomic_write_text(out, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    md, js = report_paths(out)
    atomic_write_text(md, report.to_markdown())
    atomic_write_text(js, report.to_json())
    return md, js
