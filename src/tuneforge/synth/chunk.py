"""Documents → chunks: by structure first (headings, pages), then windows of the target tokenizer's tokens.

A chunk's id hashes its document's name and its text, so a re-run with one changed file makes new ids only for
that file's chunks and the journal answers every other request (nothing is sent twice).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneforge.synth.config import ChunkConfig
from tuneforge.synth.documents import Document

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
# Without a tokenizer: one token per CJK character, one per run of up to 4 other non-space characters (about what
# BPE vocabularies like Qwen's average on English prose).
ROUGH_TOKEN = re.compile(
    rf"{CJK.pattern}|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]{{1,4}}"
)

TokenStarts = Callable[[str], list[int]]  # character offset where each token of the text starts


@dataclass(frozen=True)
class Chunk:
    """A piece of one document with where it came from."""

    id: str
    doc: str
    section: str  # heading path, "Intro > Scope"; "" before the first heading
    page: int | None  # 1-based page (PDF) or slide (PPTX) where the chunk starts
    start: int  # character offsets into the converted document text
    end: int
    text: str
    language: str  # "zh" or "en": picks the default prompts


def language_of(text: str) -> str:
    """'zh' when at least a fifth of the non-space characters are CJK, else 'en'."""
    letters = len(re.sub(r"\s", "", text))
    return "zh" if letters and len(CJK.findall(text)) * 5 >= letters else "en"


def token_counter(cfg: ChunkConfig) -> TokenStarts:
    """Token start offsets by the configured tokenizer (a local folder), or the rough count without one."""
    if cfg.tokenizer is None:
        return lambda text: [m.start() for m in ROUGH_TOKEN.finditer(text)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(cfg.tokenizer).expanduser()))

    def starts(text: str) -> list[int]:
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [start for start, _ in spans]

    return starts


def chunk_document(doc: Document, cfg: ChunkConfig, token_starts: TokenStarts) -> list[Chunk]:
    """The chunks of one converted document, in text order."""
    chunks = []
    for start, end, section in _sections(doc, cfg, token_starts):
        for lo, hi in _windows(doc.text, start, end, cfg, token_starts):
            text = doc.text[lo:hi]
            page = bisect.bisect_right(doc.page_starts, lo) if doc.page_starts and len(doc.page_starts) > 1 else None
            digest = hashlib.sha256(f"{doc.path}\0{text}".encode()).hexdigest()[:16]
            chunks.append(Chunk(digest, doc.path, section, page, lo, hi, text, language_of(text)))
    return chunks


def _sections(doc: Document, cfg: ChunkConfig, token_starts: TokenStarts) -> list[tuple[int, int, str]]:
    """(start, end, heading path) spans cut at headings and page starts; too-short ones join the next one."""
    cuts = {0, len(doc.text)} | {s for s in doc.page_starts if 0 < s < len(doc.text)}
    titles: dict[int, tuple[int, str]] = {}
    for m in HEADING.finditer(doc.text):
        cuts.add(m.start())
        titles[m.start()] = (len(m.group(1)), m.group(2))
    spans, path, pending = [], [], None
    bounds = sorted(cuts)
    for lo, hi in zip(bounds, bounds[1:]):
        if lo in titles:
            level, title = titles[lo]
            path = [p for p in path if p[0] < level] + [(level, title)]
        start = lo if pending is None else pending[0]
        section = " > ".join(t for _, t in path) if pending is None else pending[1]
        if not doc.text[start:hi].strip():
            pending = None
            continue
        if len(token_starts(doc.text[start:hi])) < cfg.min_tokens and hi < len(doc.text):
            pending = (start, section)  # a heading alone, a one-line page: it joins what follows
            continue
        pending = None
        spans.append((start, hi, section))
    return spans


def _windows(text: str, start: int, end: int, cfg: ChunkConfig, token_starts: TokenStarts) -> list[tuple[int, int]]:
    """Spans of at most cfg.tokens tokens covering text[start:end], neighbours sharing cfg.overlap tokens."""
    body = text[start:end]
    lead = len(body) - len(body.lstrip())
    body = body.strip()
    offsets = token_starts(body)
    if len(offsets) <= cfg.tokens:
        return [(start + lead, start + lead + len(body))]
    spans, first = [], 0
    while True:
        last = first + cfg.tokens
        hi = offsets[last] if last < len(offsets) else len(body)
        spans.append((start + lead + offsets[first], start + lead + len(body[:hi].rstrip())))
        if last >= len(offsets):
            return spans
        first = last - cfg.overlap
