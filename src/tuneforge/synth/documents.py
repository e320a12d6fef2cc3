"""Documents → Markdown text with structure: headings as `#`, tables as Markdown tables, page starts remembered.

One converter per kind, each a maintained library used directly (no model downloads, nothing AGPL):
pypdf (PDF: text layer per page), python-docx (headings by style, tables in body order), python-pptx (a
section per slide), openpyxl (a table per sheet), the csv module, markdownify (HTML). We call them ourselves
rather than through markitdown because we need page boundaries for provenance, which markitdown's single
string drops. A file that cannot give text (encrypted, empty, scanned without a text layer, corrupt) becomes
one `problem` line and the run goes on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".html", ".htm", ".md", ".markdown", ".txt")


@dataclass
class Document:
    """A converted document: its path relative to the docs root, Markdown text, and where each page starts."""

    path: str
    text: str = ""
    page_starts: list[int] = field(default_factory=list)  # character offset of each page (PDF) or slide (PPTX)
    problem: str | None = None  # why no text came out (the run goes on without it)


def find_documents(root: Path) -> list[Path]:
    """The supported files of a file or folder (recursive), sorted, hidden files skipped."""
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )


def convert(path: Path, name: str) -> Document:
    """`path` converted; `name` is how provenance names it. Failures become `problem`, never exceptions."""
    converter = CONVERTERS[path.suffix.lower()]
    try:
        pages = converter(path)
    except _Unusable as exc:
        return Document(name, problem=str(exc))
    except Exception as exc:  # any parser error on a corrupt file: one line in the report, the run goes on
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return Document(name, problem=f"unreadable ({type(exc).__name__}: {reason})")
    doc = Document(name)
    parts: list[str] = []
    offset = 0
    for page in pages:
        doc.page_starts.append(offset)
        parts.append(page)
        offset += len(page) + 2
    doc.text = "\n\n".join(parts)
    if not doc.text.strip():
        doc.problem = "no text layer (scanned images? run OCR first)" if path.suffix.lower() == ".pdf" else "empty"
    return doc


class _Unusable(Exception):
    """A file that is readable but gives no text for a known reason (encrypted)."""


def markdown_table(rows: Iterable[Iterable[object]]) -> str:
    """Rows as a Markdown table, the first row the header; pipes and newlines in cells escaped."""
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ").strip()


def _pdf(path: Path) -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    # An owner-password-only PDF opens with the empty user password; a user password cannot be guessed.
    if reader.is_encrypted and not reader.decrypt(""):
        raise _Unusable("encrypted (a password is needed to open it); decrypt it first")
    return [(page.extract_text() or "").strip() for page in reader.pages]


def _docx(path: Path) -> list[str]:
    import docx
    from docx.table import Table

    blocks = []
    for item in docx.Document(str(path)).iter_inner_content():
        if isinstance(item, Table):
            blocks.append(markdown_table([cell.text for cell in row.cells] for row in item.rows))
            continue
        text, style = item.text.strip(), (item.style.name if item.style is not None else "") or ""
        if not text:
            continue
        level = 1 if style == "Title" else int(style.split()[-1]) if style.startswith("Heading ") else 0
        blocks.append(f"{'#' * min(level, 6)} {text}" if level else text)
    return ["\n\n".join(blocks)]


def _pptx(path: Path) -> list[str]:
    from pptx import Presentation

    slides = []
    for number, slide in enumerate(Presentation(str(path)).slides, 1):
        title = slide.shapes.title.text_frame.text.strip() if slide.shapes.title is not None else ""
        blocks = [f"## {title or f'Slide {number}'}"]
        for shape in slide.shapes:
            if shape == slide.shapes.title:
                continue
            if shape.has_text_frame and shape.text_frame.text.strip():
                blocks.append(shape.text_frame.text.strip())
            elif getattr(shape, "has_table", False) and shape.has_table:
                blocks.append(markdown_table([c.text for c in row.cells] for row in shape.table.rows))
        slides.append("\n\n".join(blocks))
    return slides


def _xlsx(path: Path) -> list[str]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        return [f"## {sheet.title}\n\n{markdown_table(sheet.iter_rows(values_only=True))}" for sheet in book]
    finally:
        book.close()


def _csv(path: Path) -> list[str]:
    return [markdown_table(csv.reader(io.StringIO(_text(path))))]


def _html(path: Path) -> list[str]:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript"]):  # markdownify keeps their text; it is code, not content
        tag.decompose()
    return [MarkdownConverter(heading_style="ATX").convert_soup(soup).strip()]


def _plain(path: Path) -> list[str]:
    return [_text(path).strip()]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unusable(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start}); save it as UTF-8"
        ) from None


CONVERTERS: dict[str, Callable[[Path], list[str]]] = {
    ".pdf": _pdf,
    ".docx": _docx,
    ".pptx": _pptx,
    ".xlsx": _xlsx,
    ".csv": _csv,
    ".html": _html,
    ".htm": _html,
    ".md": _plain,
    ".markdown": _plain,
    ".txt": _plain,
}
