"""What an import did with every key of the source: mapped, mapped with a note, or not carried over (and why)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneforge.errors import UserError

Status = Literal["mapped", "noted", "dropped"]


@dataclass
class Entry:
    """One source key: what it became in tuneforge (`target`), or the nearest tuneforge feature when dropped."""

    key: str
    value: Any
    status: Status
    target: str = ""
    note: str = ""


@dataclass
class DatasetCheck:
    """How one imported dataset loaded and rendered: records kept, dropped (by reason), and rendering notes."""

    name: str
    path: str
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """Everything an import decided, in the order it decided it; refusals stop the import in one line."""

    source: str
    tool: str
    entries: list[Entry] = field(default_factory=list)
    datasets: list[DatasetCheck] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # LLaMA-Factory's [template, enable_thinking], to compare its rendering with tuneforge's (data_check.py).
    lf_template: list[Any] | None = None

    def add(self, key: str, value: Any, status: Status, target: str = "", note: str = "") -> None:
        """Record what became of one source key."""
        self.entries.append(Entry(key, value, status, target, note))

    def refuse(self, key: str, value: Any, feature: str) -> None:
        """The source uses a feature tuneforge does not have: the import cannot write an equivalent config."""
        self.refusals.append(f"{key}: {value!r}: {feature}")

    def raise_refusals(self) -> None:
        """One line naming every unsupported feature, when there is any."""
        if self.refusals:
            raise UserError(f"{self.source}: cannot convert ({self.tool}): " + "; ".join(self.refusals))

    def to_markdown(self) -> str:
        """The report as Markdown: a table of keys, then one section per dataset."""
        lines = [
            f"# Imported from {self.tool}: {self.source}",
            "",
            "| key | value | status | tuneforge | note |",
            "|---|---|---|---|---|",
        ]
        for e in self.entries:
            lines.append(f"| `{e.key}` | {_cell(e.value)} | {e.status} | {_cell(e.target)} | {_cell(e.note)} |")
        for ds in self.datasets:
            dropped = ", ".join(f"{n} {why}" for why, n in ds.dropped.items()) or "none"
            lines += ["", f"## Dataset {ds.name} ({ds.path})", "", f"- kept {ds.kept}, dropped: {dropped}"]
            lines += [f"- {note}" for note in ds.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """The report as JSON (for tools and tests)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=2, default=str) + "\n"

    def print_table(self, console) -> None:
        """Print the key table and the dataset checks with rich."""
        from rich.table import Table

        colour = {"mapped": "green", "noted": "yellow", "dropped": "red"}
        table = Table(title=f"{self.tool} → tuneforge: {self.source}", show_lines=False)
        for column in ("key", "value", "status", "tuneforge", "note"):
            table.add_column(column, overflow="fold")
        for e in self.entries:
            status = f"[{colour[e.status]}]{e.status}[/]"
            table.add_row(e.key, _cell(e.value), status, e.target, e.note)
        console.print(table)
        for ds in self.datasets:
            dropped = ", ".join(f"{n} {why}" for why, n in ds.dropped.items()) or "none"
            console.print(f"dataset {ds.name} ({ds.path}): kept {ds.kept}, dropped: {dropped}")
            for note in ds.notes:
                console.print(f"  {note}")


def _cell(value: Any) -> str:
    """A value as one table cell: no newlines, no pipes."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("\n", " ").replace("|", "\\|")


def report_paths(config_out: Path, what: str = "import") -> tuple[Path, Path]:
    """Where the report goes beside the written config: tuneforge.yaml → tuneforge.import.md / .json."""
    stem = config_out.with_suffix("")
    return stem.with_name(f"{stem.name}.{what}.md"), stem.with_name(f"{stem.name}.{what}.json")
