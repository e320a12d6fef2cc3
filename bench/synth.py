"""`tuneforge synth` throughput, document conversion speed and memory. Not part of the tests.

1. Concurrency: the scripted OpenAI-compatible server of the tests (tests/synth_server.py, no faults) in its own
   process answers every request after `--latency` seconds; synth runs with `--concurrency` requests allowed.
   Baseline: the ideal, every slot busy all the time: requests × latency / concurrency seconds. Reported: mean
   requests in flight against the limit, and pairs/s against the ideal pairs/s.
2. PDF conversion: pages/s of synth's converter against a bare pypdf `extract_text` loop over the same files
   (the real Debian PDFs the tests use, and a 200-page PDF made with reportlab).
3. Memory: peak RSS of a synth run over `--docs` generated documents (Markdown, DOCX, PDF), against the peak RSS
   of a process that only imports synth and the openai client.

    .venv/bin/python bench/synth.py --concurrency 64 --latency 0.2 --pairs 3000 --docs 1000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the scripted server (tests/synth_server.py)
DEBIAN_PDFS = [
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
]
SENTENCE = "Operators inspect the reactor every ninety days and record the result in the maintenance log. "


def _serve(latency: float, urls: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    from synth_server import ScriptedServer

    with ScriptedServer(faults=False, latency=latency) as server:
        urls.put(server.url)
        stop.wait()


def served(latency: float):
    """Start the scripted server in its own process (its work off this process's interpreter lock)."""
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(latency, urls, stop), daemon=True)
    process.start()
    return urls.get(timeout=120), lambda: (stop.set(), process.join(30))


def _config(url: str, docs: Path, out: Path, concurrency: int, questions: int, judge: bool):
    from tuneforge.synth.config import validate_synth

    return validate_synth(
        {
            "docs": str(docs),
            "out": str(out),
            "model": {"endpoint": url, "name": "scripted", "concurrency": concurrency, "timeout": 30},
            "generate": {"questions_per_chunk": questions},
            "quality": {"judge": judge, "min_score": 1, "dedup_threshold": None},
            "chunk": {"tokens": 512, "overlap": 0},
        },
        "bench",
    )


def concurrency_run(args: argparse.Namespace, tmp: Path) -> dict:
    """Mean in flight and pairs/s against the ideal at `args.concurrency` requests and `args.latency` s each."""
    from tuneforge.synth.run import synth

    questions = 4
    docs = tmp / "docs"
    docs.mkdir()
    # Distinct sentences, so that no chunk repeats and the scripted server's questions differ.
    for i in range(args.pairs // questions):
        text = " ".join(f"Section {i} rule {j}: {SENTENCE}" for j in range(6))
        (docs / f"doc{i:05d}.md").write_text(f"# Manual {i}\n\n{text}\n", encoding="utf-8")
    url, stop = served(args.latency)
    try:
        cfg = _config(url, docs, tmp / "out", args.concurrency, questions, judge=True)
        report = synth(cfg, "EMPTY", log=lambda *_: None)
    finally:
        stop()
    sent = report["requests"]["sent"]
    ideal_s = sent * args.latency / args.concurrency
    pairs = report["requested"]
    return {
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "requests": sent,
        "pairs": pairs,
        "written": report["written"]["total"],
        "mean_in_flight": report["concurrency"]["mean_in_flight"],
        "in_flight_ratio": round(report["concurrency"]["mean_in_flight"] / args.concurrency, 3),
        "generation_s": report["generation_s"],
        "pairs_per_s": round(pairs / report["generation_s"], 1),
        "ideal_pairs_per_s": round(pairs / ideal_s, 1),
        "pairs_per_s_ratio": round(ideal_s / report["generation_s"], 3),
    }


def pdf_run(tmp: Path) -> dict:
    """Pages/s of synth's PDF conversion against a bare pypdf loop on the same files."""
    from pypdf import PdfReader
    from reportlab.pdfgen import canvas

    from tuneforge.synth.documents import convert

    made = tmp / "made.pdf"
    page = canvas.Canvas(str(made))
    for number in range(200):
        for line in range(40):
            page.drawString(40, 800 - line * 18, f"Page {number} line {line}: {SENTENCE[:80]}")
        page.showPage()
    page.save()
    files = [p for p in DEBIAN_PDFS if p.is_file()] + [made]
    pages = sum(len(PdfReader(p).pages) for p in files)
    start = time.perf_counter()
    for path in files:
        [pg.extract_text() for pg in PdfReader(path).pages]
    bare = time.perf_counter() - start
    start = time.perf_counter()
    for path in files:
        assert convert(path, path.name).problem is None
    ours = time.perf_counter() - start
    return {
        "files": [p.name for p in files],
        "pages": pages,
        "pages_per_s": round(pages / ours, 1),
        "pypdf_pages_per_s": round(pages / bare, 1),
        "ratio": round(bare / ours, 3),
    }


def _memory_child(peaks: multiprocessing.Queue, docs: Path, out: Path, url: str, only_imports: bool) -> None:
    import openai  # noqa: F401  (the floor: what every run loads)

    from tuneforge.synth.run import synth

    if not only_imports:
        synth(_config(url, docs, out, 16, 1, judge=False), "EMPTY", log=lambda *_: None)
    # VmHWM (KiB), not ru_maxrss: Linux carries ru_maxrss over exec, so a spawned child would report its parent's peak.
    status = Path("/proc/self/status").read_text()
    peaks.put(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024)


def _peak_rss_mib(*args: object) -> float:
    """Peak RSS of a fresh process running `_memory_child(*args)`."""
    context = multiprocessing.get_context("spawn")
    peaks = context.Queue()
    process = context.Process(target=_memory_child, args=(peaks, *args))
    process.start()
    peak = peaks.get(timeout=3600)
    process.join()
    return peak


def memory_run(count: int, tmp: Path) -> dict:
    """Peak RSS of a run over `count` documents (a tenth DOCX, a tenth PDF, the rest Markdown)."""
    import docx
    from reportlab.pdfgen import canvas

    docs = tmp / "many"
    docs.mkdir()
    for i in range(count):
        text = f"Document {i}. " + SENTENCE * 8
        if i % 10 == 0:
            document = docx.Document()
            document.add_heading(f"Manual {i}", 1)
            document.add_paragraph(text)
            document.save(str(docs / f"d{i:05d}.docx"))
        elif i % 10 == 1:
            page = canvas.Canvas(str(docs / f"d{i:05d}.pdf"))
            page.drawString(40, 800, text[:100])
            page.showPage()
            page.save()
        else:
            (docs / f"d{i:05d}.md").write_text(f"# Manual {i}\n\n{text}\n", encoding="utf-8")
    url, stop = served(0.0)
    try:
        floor = _peak_rss_mib(docs, tmp / "mem-out", url, True)
        start = time.perf_counter()
        peak = _peak_rss_mib(docs, tmp / "mem-out", url, False)
        seconds = time.perf_counter() - start
    finally:
        stop()
    return {
        "documents": count,
        "peak_rss_mib": round(peak, 1),
        "imports_only_rss_mib": round(floor, 1),
        "ratio": round(peak / floor, 2),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--pairs", type=int, default=3000, help="Pairs requested in the concurrency run.")
    parser.add_argument("--docs", type=int, default=1000, help="Documents of the memory run.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "synth.json")
    args = parser.parse_args()
    from tuneforge.io import atomic_write_json

    host = machine("openai", "pypdf", "datasketch")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        flight = concurrency_run(args, root)
        pdf = pdf_run(root)
        memory = memory_run(args.docs, root)
    print(
        f"concurrency {flight['concurrency']}, {flight['latency_s']} s/request: mean in flight "
        f"{flight['mean_in_flight']} ({flight['in_flight_ratio']:.0%} of the limit); {flight['pairs_per_s']} pairs/s "
        f"vs ideal {flight['ideal_pairs_per_s']} ({flight['pairs_per_s_ratio']:.0%})"
    )
    print(f"PDF: {pdf['pages_per_s']} pages/s vs bare pypdf {pdf['pypdf_pages_per_s']} ({pdf['ratio']:.2f}x)")
    print(
        f"memory: {memory['documents']} documents, peak {memory['peak_rss_mib']} MiB vs imports only "
        f"{memory['imports_only_rss_mib']} MiB ({memory['ratio']}x), {memory['seconds']} s"
    )
    command = " ".join([".venv/bin/python", "bench/synth.py", *sys.argv[1:]])
    result = {"benchmark": "synth", "command": command, "machine": host, "concurrency": flight, "pdf": pdf}
    atomic_write_json(args.out, {**result, "memory": memory})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
