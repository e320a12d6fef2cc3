"""synth: documents → Markdown (real third-party files and ones made here), chunking, prompts, reply parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TOKENIZER_DIR

from tuneforge.errors import UserError
from tuneforge.synth.chunk import chunk_document, language_of, token_counter
from tuneforge.synth.client import parse_json, split_reasoning
from tuneforge.synth.config import ChunkConfig, load_synth_config
from tuneforge.synth.documents import Document, convert, find_documents
from tuneforge.synth.prompts import Questions, Templates, fill

# Real documents shipped by Debian packages installed on the test machines (dpkg -S names the package).
DEBIAN_PDFS = {
    "shared-mime-info-spec.pdf": Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    "libtasn1.pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
}


def _debian_pdf(name: str) -> Path:
    path = DEBIAN_PDFS[name]
    if not path.is_file():
        pytest.skip(f"{path} not installed (Debian package shared-mime-info / libtasn1-doc)")
    return path


def test_real_pdf_pages_sections_and_offsets():
    """shared-mime-info's spec (17 pages): page starts kept, every chunk is its text span, on the right page."""
    doc = convert(_debian_pdf("shared-mime-info-spec.pdf"), "spec.pdf")
    assert doc.problem is None and len(doc.page_starts) == 17
    assert doc.text.startswith("Shared MIME-info Database")
    chunks = chunk_document(doc, ChunkConfig(tokens=256, overlap=32), token_counter(ChunkConfig()))
    assert len(chunks) > 17
    for chunk in chunks:
        assert chunk.text == doc.text[chunk.start : chunk.end] and chunk.text.strip() == chunk.text
        assert doc.page_starts[chunk.page - 1] <= chunk.start
        assert chunk.page == 17 or chunk.start < doc.page_starts[chunk.page]
        assert chunk.language == "en" and chunk.doc == "spec.pdf"
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)
    assert {c.page for c in chunks} == set(range(1, 18))  # every page gave text
    assert len({c.id for c in chunks}) == len(chunks)


def test_long_section_windows_overlap_by_tokens():
    """A section longer than chunk.tokens is cut into windows sharing exactly `overlap` tokens."""
    doc = convert(_debian_pdf("libtasn1.pdf"), "libtasn1.pdf")
    cfg = ChunkConfig(tokens=64, overlap=16, min_tokens=1)
    starts = token_counter(cfg)
    chunks = chunk_document(doc, cfg, starts)
    assert all(len(starts(c.text)) <= 64 for c in chunks)
    same_section = [(a, b) for a, b in zip(chunks, chunks[1:]) if b.start < a.end]
    assert same_section, "no window of a long section overlapped its neighbour"
    for a, b in same_section:
        shared = doc.text[b.start : a.end]
        assert len(starts(shared)) == 16, shared


def test_chunk_ids_change_only_with_their_text(tmp_path):
    """Ids hash the document name and chunk text: editing one section changes only that chunk's id."""
    text = "# A\n\n" + "alpha beta gamma delta. " * 20 + "\n\n# B\n\n" + "epsilon zeta eta. " * 20
    cfg = ChunkConfig()
    first = chunk_document(Document("x.md", text), cfg, token_counter(cfg))
    second = chunk_document(Document("x.md", text.replace("epsilon", "omega")), cfg, token_counter(cfg))
    assert [c.section for c in first] == ["A", "B"]
    assert first[0].id == second[0].id and first[1].id != second[1].id
    assert chunk_document(Document("y.md", text), cfg, token_counter(cfg))[0].id != first[0].id


def _docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("安全手册", level=1)
    document.add_paragraph("操作人员必须每九十天检查一次反应堆，并记录检查结果。")
    document.add_heading("Badges", level=2)
    document.add_paragraph("Visitors wear a red badge.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), value in {(0, 0): "Role", (0, 1): "Badge", (1, 0): "Visitor", (1, 1): "red | temporary"}.items():
        table.cell(r, c).text = value
    document.save(str(path))
    return path


def test_docx_headings_and_tables_as_markdown(tmp_path):
    """python-docx made file: headings by style, the table in body order, pipes escaped."""
    doc = convert(_docx(tmp_path / "manual.docx"), "manual.docx")
    assert doc.text == (
        "# 安全手册\n\n操作人员必须每九十天检查一次反应堆，并记录检查结果。\n\n"
        "## Badges\n\nVisitors wear a red badge.\n\n"
        "| Role | Badge |\n|---|---|\n| Visitor | red \\| temporary |"
    )
    chunks = chunk_document(doc, ChunkConfig(min_tokens=4), token_counter(ChunkConfig()))
    assert [(c.section, c.language) for c in chunks] == [("安全手册", "zh"), ("安全手册 > Badges", "en")]


def test_chinese_and_english_pdf_made_with_reportlab(tmp_path):
    """A two-page PDF (CJK CID font, then Helvetica): text and pages come back; the language picks the prompts."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    page = canvas.Canvas(str(tmp_path / "rules.pdf"))
    page.setFont("STSong-Light", 14)
    page.drawString(72, 750, "第一章 安全规定")
    page.drawString(72, 720, "操作人员必须每九十天检查一次反应堆。")
    page.showPage()
    page.setFont("Helvetica", 12)
    page.drawString(72, 750, "Chapter 2 Maintenance: replace the filters every spring.")
    page.showPage()
    page.save()
    doc = convert(tmp_path / "rules.pdf", "rules.pdf")
    assert doc.text == (
        "第一章 安全规定\n操作人员必须每九十天检查一次反应堆。\n\n"
        "Chapter 2 Maintenance: replace the filters every spring."
    )
    assert doc.page_starts == [0, len("第一章 安全规定\n操作人员必须每九十天检查一次反应堆。") + 2]
    chunks = chunk_document(doc, ChunkConfig(min_tokens=1), token_counter(ChunkConfig()))
    assert [(c.page, c.language) for c in chunks] == [(1, "zh"), (2, "en")]
    templates = Templates({})
    assert "提出 3 个" in fill(templates.get("questions", "zh")[0], count="3", chunk=chunks[0].text)


def test_office_html_csv_conversions(tmp_path):
    """PPTX (a section per slide), XLSX (a table per sheet), CSV, HTML headings and tables."""
    from openpyxl import Workbook
    from pptx import Presentation

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Quarterly review"
    slide.placeholders[1].text = "Revenue grew 12%."
    deck.save(str(tmp_path / "deck.pptx"))
    book = Workbook()
    book.active.title = "Prices"
    book.active.append(["item", "price"])
    book.active.append(["filter", 12.5])
    book.save(tmp_path / "prices.xlsx")
    (tmp_path / "stock.csv").write_text("item,count\nfilter,3\n", encoding="utf-8")
    (tmp_path / "page.html").write_text(
        "<html><script>x()</script><h1>Guide</h1><p>Turn <b>off</b> power.</p></html>", encoding="utf-8"
    )
    deck_doc = convert(tmp_path / "deck.pptx", "deck.pptx")
    assert deck_doc.text == "## Quarterly review\n\nRevenue grew 12%." and deck_doc.page_starts == [0]
    assert convert(tmp_path / "prices.xlsx", "p").text == "## Prices\n\n| item | price |\n|---|---|\n| filter | 12.5 |"
    assert convert(tmp_path / "stock.csv", "s").text == "| item | count |\n|---|---|\n| filter | 3 |"
    assert convert(tmp_path / "page.html", "h").text == "# Guide\n\nTurn **off** power."


def test_unusable_files_are_one_line_each(tmp_path):
    """Encrypted, empty, scanned (no text layer), corrupt, not UTF-8; the third-party empty templates too."""
    import docx
    import pptx
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.write(tmp_path / "scanned.pdf")
    writer.encrypt("secret")
    writer.write(tmp_path / "locked.pdf")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\n garbage")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    problems = {p.name: convert(p, p.name).problem for p in find_documents(tmp_path)}
    assert problems == {
        "broken.docx": f"unreadable (PackageNotFoundError: Package not found at '{tmp_path / 'broken.docx'}')",
        "broken.pdf": problems["broken.pdf"],
        "empty.txt": "empty",
        "latin1.txt": "not UTF-8 text (byte 0xe9 at 3); save it as UTF-8",
        "locked.pdf": "encrypted (a password is needed to open it); decrypt it first",
        "scanned.pdf": "no text layer (scanned images? run OCR first)",
    }
    assert problems["broken.pdf"].startswith("unreadable (")
    # Files shipped inside python-docx and python-pptx (their blank templates): readable, and empty.
    for shipped in (
        Path(docx.__file__).parent / "templates/default.docx",
        Path(pptx.__file__).parent / "templates/default.pptx",
    ):
        assert convert(shipped, shipped.name).problem == "empty"


@pytest.mark.skipif(not TOKENIZER_DIR.is_dir(), reason="real Qwen3 tokenizer not found (../shared/assets)")
def test_chunks_counted_in_the_target_tokenizer():
    """With chunk.tokenizer, windows hold at most `tokens` Qwen3 tokens and neighbours share `overlap` of them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    text = "# 规定\n\n" + "操作人员必须每九十天检查一次反应堆。" * 30
    cfg = ChunkConfig(tokens=40, overlap=8, tokenizer=str(TOKENIZER_DIR))
    chunks = chunk_document(Document("r.md", text), cfg, token_counter(cfg))
    counts = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(counts) <= 40 and len(chunks) > 3 and counts[0] == 40
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))


def test_language_and_reply_parsing():
    """Reasoning split from reasoning_content or inline <think>; JSON after thinking; schema errors readable."""
    assert language_of("操作人员必须 check") == "zh" and language_of("Operators must check 反") == "en"
    assert split_reasoning("<think>\nweigh it\n</think>\n\nYes.", None) == ("weigh it", "Yes.")
    assert split_reasoning("Yes.", "server reasoning") == ("server reasoning", "Yes.")
    assert split_reasoning("Yes.", None) == (None, "Yes.")
    _, content = split_reasoning(
        '<think>\n{"questions": []} draft\n</think>\n\n```json\n{"questions": ["Q?"]}\n```', None
    )
    assert parse_json(content, Questions).questions == ["Q?"]
    with pytest.raises(ValueError, match=r"not JSON \(Expecting"):
        parse_json('{"questions": ["Q?"', Questions)
    with pytest.raises(ValueError, match="does not match the schema \\(questions: List should have at least 1"):
        parse_json('{"questions": []}', Questions)


def test_config_unknown_keys_name_the_closest(tmp_path):
    """The synth YAML is validated like the training config: every problem at once, closest key named."""
    path = tmp_path / "synth.yaml"
    path.write_text(
        "docs: d\nout: o\nmodel: {endpoint: http://x, name: m, concurency: 4}\nchunk: {tokens: 64, overlap: 64}\n"
        "qualty: {}\n",
        encoding="utf-8",
    )
    with pytest.raises(UserError) as err:
        load_synth_config(path, [])
    assert str(err.value).splitlines() == [
        f"{path}: unknown key 'model.concurency'; did you mean 'model.concurrency'?",
        f"{path}: unknown key 'qualty'; did you mean 'quality'?",
    ]
    path.write_text("docs: d\nout: o\nmodel: {endpoint: http://x, name: m}\nchunk: {tokens: 64, overlap: 64}\n")
    with pytest.raises(UserError, match=r"chunk.overlap \(64\) must be below chunk.tokens \(64\)"):
        load_synth_config(path, [])
    assert load_synth_config(path, ["chunk.overlap=8", "model.concurrency=3"]).model.concurrency == 3
