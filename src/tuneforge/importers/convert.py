"""`tuneforge config import`: read another tool's config or command line, write a validated tuneforge config and
the report of every key beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuneforge.config import Config, apply_overrides, read_yaml, validate
from tuneforge.errors import UserError
from tuneforge.importers import Tool
from tuneforge.importers.draft import Draft, parse_command
from tuneforge.importers.report import ImportReport, report_paths
from tuneforge.io import atomic_write_text

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


def write_import(raw: dict[str, Any], report: ImportReport, out: Path, what: str = "import") -> tuple[Path, Path]:
    """Write the config and, beside it, the report as Markdown and JSON (atomically); returns the report paths."""
    header = (
        f"# Converted by `tuneforge config {what}` from {report.source} ({report.tool}); see the report beside it.\n"
    )
    atomic_write_text(out, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    md, js = report_paths(out, what)
    atomic_write_text(md, report.to_markdown())
    atomic_write_text(js, report.to_json())
    return md, js


def export_config(config: Path, to: str, out: Path, overrides: list[str] | None = None) -> Path:
    """Write `config` as another tool's config at `out` (LLaMA-Factory: with dataset_info.json beside it) and the
    report; returns the report's Markdown path."""
    import json

    from tuneforge.config import load_config
    from tuneforge.importers.lf_export import export_llamafactory

    if to != "llamafactory":
        raise UserError(f"--to {to}: expected llamafactory (the only tool tuneforge exports to)")
    lf, info, report = export_llamafactory(load_config(config, overrides), str(config))
    lf["dataset_dir"] = str(out.parent.resolve())
    atomic_write_text(out.parent / "dataset_info.json", json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    return write_import(lf, report, out, "export")[0]
