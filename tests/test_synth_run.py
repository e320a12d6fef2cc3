"""synth end to end against a scripted OpenAI-compatible server with injected faults; kill -9 and resume."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fastapi
import pytest
import yaml
from synth_server import ScriptedServer, journal_request_id
from test_synth_documents import DEBIAN_PDFS, _docx

from tuneforge.config import DatasetConfig
from tuneforge.data.sources import load_conversations
from tuneforge.errors import UserError
from tuneforge.eval.suite import load_suite
from tuneforge.serve.app import serve_in_background
from tuneforge.synth.chunk import chunk_document, token_counter
from tuneforge.synth.config import ChunkConfig, validate_synth
from tuneforge.synth.documents import convert
from tuneforge.synth.run import synth

ROOT = Path(__file__).resolve().parents[1]


def _docs(folder: Path) -> Path:
    """Real and made documents, Chinese and English, plus one that gives no text."""
    folder.mkdir()
    spec = DEBIAN_PDFS["shared-mime-info-spec.pdf"]
    if not spec.is_file():
        pytest.skip(f"{spec} not installed (Debian package shared-mime-info)")
    (folder / "spec.pdf").write_bytes(spec.read_bytes())
    _docx(folder / "manual.docx")
    (folder / "notes.md").write_text(
        "# 维护\n\n过滤器每年春天更换一次。更换后要记录日期和操作人员的名字。\n\n# Visitors\n\n"
        "Visitors sign in at the front desk. They are escorted at all times by a member of staff.\n",
        encoding="utf-8",
    )
    (folder / "blank.txt").write_text("\n", encoding="utf-8")
    return folder


def _one_document(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nThe filter is replaced every spring by the night shift.\n", encoding="utf-8")
    return folder


def _config(url: str, docs: Path, out: Path, **extra: object) -> dict:
    return {
        "docs": str(docs),
        "out": str(out),
        "model": {"endpoint": url, "name": "scripted", "concurrency": 8, "timeout": 3.0, "max_retries": 3},
        "chunk": {"tokens": 200, "overlap": 20},
        "generate": {"questions_per_chunk": 3},
        "output": {"eval_fraction": 0.2},
        "budget": {"max_failure_rate": 0.5},
        **extra,
    }


def _records(out: Path) -> tuple[list[dict], list[dict]]:
    read = lambda name: [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return read("train.jsonl"), read("eval.jsonl")


def test_faults_exact_accounting_and_valid_items_only(tmp_path):
    """10 % HTTP faults, 5 % malformed JSON, reasoning both ways, slow tail: the counts and the dataset are exact."""
    docs = _docs(tmp_path / "docs")
    with ScriptedServer(timeout_sleep=3.5) as server:
        cfg = validate_synth(_config(server.url, docs, tmp_path / "out"), "test")
        report = synth(cfg, "EMPTY", log=lambda *_: None)
        ledger = server.ledger
        # Every kind of fault happened and was survived; Retry-After was waited for.
        assert set(ledger.faults) == {"429", "500", "timeout"}
        assert ledger.retry_gaps and all(waited >= asked for asked, waited in ledger.retry_gaps)
        assert max(Counter(ledger.delivered).values()) == 1  # no finished request sent twice

        failed, filtered = report["failed"], report["filtered"]
        assert report["requested"] == report["written"]["total"] + failed["total"] + filtered["total"]
        assert failed["total"] == ledger.hopeless_items > 0
        assert set(failed["by_reason"]) <= {
            "questions: invalid JSON after one retry (not JSON)",
            "judge: invalid JSON after one retry (not JSON)",
        }
        by_judge = sum(n for reason, n in filtered["by_reason"].items() if reason.startswith("judge:"))
        assert by_judge == ledger.judged_fail
        assert filtered["by_reason"]["near-duplicate question"] >= ledger.duplicates > 0
        assert report["documents"]["without_text"] == [{"file": "blank.txt", "problem": "empty"}]
        assert report["requests"]["sent"] == len(ledger.delivered) and report["requests"]["from_journal"] == 0
        assert report["concurrency"]["peak_in_flight"] == 8

        train, held = _records(tmp_path / "out")
        pairs = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in train + held]
        assert len(pairs) == len(set(pairs)) == report["written"]["total"]
        assert set(pairs) == ledger.judged_pass  # exactly the pairs the judge passed, nothing else
        # Reasoning kept from reasoning_content and from inline <think>; never left in the answer.
        kinds = Counter()
        for r in train + held:
            question, answer = r["messages"][0]["content"], r["messages"][1]
            reasoning = answer.get("reasoning_content")
            assert "<think>" not in answer["content"]
            assert reasoning in (None, f"Looking for {question[:40]}.", f"The text answers {question[:40]}.")
            kinds[None if reasoning is None else reasoning.split()[0]] += 1
        assert set(kinds) == {None, "Looking", "The"}
        # Held out by chunk: no chunk feeds both splits; provenance points at the chunk's text.
        assert not {r["provenance"]["chunk_id"] for r in train} & {r["provenance"]["chunk_id"] for r in held}
        chunks = {}
        for name in ("spec.pdf", "manual.docx", "notes.md"):
            doc = convert(docs / name, name)
            for c in chunk_document(doc, ChunkConfig(tokens=200, overlap=20), token_counter(ChunkConfig())):
                chunks[c.id] = (c, doc)
        for r in train + held:
            source = r["provenance"]
            chunk, doc = chunks[source["chunk_id"]]
            assert (source["file"], source["page"], source["start"], source["end"]) == (
                chunk.doc,
                chunk.page,
                chunk.start,
                chunk.end,
            )
            assert doc.text[source["start"] : source["end"]] == chunk.text
            assert source["model"] == "scripted" and set(source["templates"]) == {"questions", "answer", "judge"}
            assert source["judge"]["score"] >= 7 and source["judge"]["supported"]
        assert {r["provenance"]["file"] for r in train} == {"spec.pdf", "manual.docx", "notes.md"}
        # The outputs are read as they are by train (messages with reasoning) and eval (the suite).
        loaded = load_conversations(DatasetConfig(path=str(tmp_path / "out/train.jsonl"), format="messages"), log=print)
        assert len(loaded) == len(train)
        suite, base = load_suite(tmp_path / "out/eval_suite.yaml")
        assert [(t.name, t.type, t.path) for t in suite.tasks] == [
            ("synth-heldout", "generation", "eval.jsonl"),
            ("synth-judge", "judge", "eval.jsonl"),
        ]
        assert (base / "eval.jsonl").is_file() and held

        # A second run answers everything from the journal: nothing sent, the same files.
        before = {n: (tmp_path / "out" / n).read_bytes() for n in ("train.jsonl", "eval.jsonl", "preview.md")}
        sent = len(ledger.delivered)
        again = synth(cfg, "EMPTY", log=lambda *_: None)
        assert len(ledger.delivered) == sent and again["requests"]["sent"] == 0
        assert again["requests"]["from_journal"] == report["requests"]["sent"]
        assert {n: (tmp_path / "out" / n).read_bytes() for n in before} == before
        assert {k: again[k] for k in ("requested", "written", "failed", "filtered", "tokens")} == {
            k: report[k] for k in ("requested", "written", "failed", "filtered", "tokens")
        }


def _cli(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "synth", str(config), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _journal_prompts(out: Path) -> set[str]:
    """The server's request ids of every complete journal line (the key is chunk:step:prompt:model)."""
    found = set()
    for path in (out / "journal").glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # the torn line of a kill
                found.add(journal_request_id(json.loads(line)["key"]))
    return found


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open("rb")) if path.is_file() else 0


# Every later step too: synthesized reasoning, a follow-up, tags, rated preference pairs (a second sample, judged).
FEATURES = {
    "generate": {"questions_per_chunk": 3, "reasoning": "synthesize", "follow_ups": 1, "tags": ["rules", "people"]},
    "preference": {"source": "rated"},
}


@pytest.mark.slow  # 1-4 min (2 cores shared by 7 sessions): six process starts and two full runs
def test_kill9_at_five_moments_then_resume(tmp_path):
    """kill -9 five times mid-run, then finish: the same dataset as an unbroken run, no finished request re-sent."""
    docs = _docs(tmp_path / "docs")
    rng = random.Random(23)
    with ScriptedServer(latency=0.05, timeout_sleep=3.5) as server:
        config = tmp_path / "synth.yaml"
        config.write_text(yaml.safe_dump(_config(server.url, docs, tmp_path / "out", **FEATURES)), encoding="utf-8")
        journal = tmp_path / "out/journal/journal.jsonl"
        for kill in range(5):
            start = _lines(journal)
            process = _cli(config)
            target = start + rng.randint(1, 25)  # a random point of progress, then a random instant after it
            while _lines(journal) < target and process.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.1))
            assert process.poll() is None, f"run {kill} finished before its kill:\n{process.communicate()[0]}"
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            done, delivered = _journal_prompts(tmp_path / "out"), len(server.ledger.delivered)
            resumed = _cli(config) if kill == 4 else None
            if resumed is not None:
                output = resumed.communicate(timeout=300)[0]
                assert resumed.returncode == 0, output
            # Nothing journaled before a kill is sent again by a later run.
            later = server.ledger.delivered[delivered:]
            assert not done & set(later)
        assert "train on it with this data section:" in output and "format: messages" in output
        assert "or DPO on the preference pairs:" in output and "format: messages_preference" in output
        resumed_files = _records(tmp_path / "out")
        report = json.loads((tmp_path / "out/report.json").read_text())

    with ScriptedServer(latency=0.0, timeout_sleep=3.5) as server:
        unbroken = validate_synth(_config(server.url, docs, tmp_path / "unbroken", **FEATURES), "test")
        reference = synth(unbroken, "EMPTY", log=lambda *_: None)
    assert resumed_files == _records(tmp_path / "unbroken")  # nothing lost, nothing duplicated
    for name in ("preference.jsonl", "preference_eval.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "unbroken" / name).read_bytes()
    assert report["preference"] == reference["preference"] and reference["preference"]["written"] > 0
    assert {"reasoning", "follow_up", "tags", "second_answer"} <= set(reference["requests"]["sent_by_step"])
    questions = [r["messages"][0]["content"] for r in resumed_files[0] + resumed_files[1]]
    assert len(questions) == len(set(questions))
    assert {k: report[k] for k in ("requested", "written", "failed", "filtered")} == {
        k: reference[k] for k in ("requested", "written", "failed", "filtered")
    }


def test_failure_threshold_exit_status_and_key_from_environment(tmp_path):
    """Above budget.max_failure_rate the command exits 1 after writing everything; the key comes from the env."""
    docs = _one_document(tmp_path / "docs")
    with ScriptedServer(faults=False) as server:
        config = tmp_path / "synth.yaml"
        raw = _config(server.url, docs, tmp_path / "out", budget={"max_failure_rate": 0.0, "max_tokens": 1})
        raw["generate"] = {"questions_per_chunk": 1}
        raw["model"]["api_key_env"] = "SYNTH_TEST_KEY"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        missing = _cli(config)
        assert (
            missing.communicate(timeout=120)[0]
            .strip()
            .endswith("api_key_env: the environment variable SYNTH_TEST_KEY is not set; export it with the key")
        )
        assert missing.returncode == 2
        os.environ["SYNTH_TEST_KEY"] = "k"
        try:
            process = _cli(config)
            output = process.communicate(timeout=120)[0]
        finally:
            del os.environ["SYNTH_TEST_KEY"]
    # The token budget (1 token) stops every request after the first: those pairs fail, and the run says so.
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["failed"]["by_reason"] == {
        "answer: token budget reached (budget.max_tokens)": report["failed"]["total"]
    }
    assert process.returncode == 1 and "budget.max_failure_rate 0.0%" in output
    assert report["requests"]["sent"] == 1 and (tmp_path / "out/train.jsonl").read_text() == ""


def test_shards_merge_through_their_journals(tmp_path):
    """--shard 0/2 and 1/2 split the documents; a run without --shard then sends nothing and writes them all."""
    from tuneforge.synth.run import parse_shard

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.md").write_text(f"# Doc {i}\n\nPart {i} of the manual says rule {i} applies.\n", "utf-8")
    with ScriptedServer(faults=False) as server:
        cfg = validate_synth(_config(server.url, docs, tmp_path / "out"), "test")
        shards = [synth(cfg, "EMPTY", parse_shard(s), log=lambda *_: None) for s in ("0/2", "1/2")]
        sent = len(server.ledger.delivered)
        merged = synth(cfg, "EMPTY", log=lambda *_: None)
        assert len(server.ledger.delivered) == sent and merged["requests"]["sent"] == 0
        alone = synth(validate_synth(_config(server.url, docs, tmp_path / "alone"), "test"), "EMPTY", log=print)
    journals = sorted(p.name for p in (tmp_path / "out/journal").iterdir())
    assert journals == ["journal.jsonl", "shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    assert (tmp_path / "out/journal/journal.jsonl").read_text() == ""  # the merged run had nothing to ask
    assert [s["documents"]["found"] for s in shards] == [2, 4]  # a hash of each name picks its shard
    assert merged["requested"] == sum(s["requested"] for s in shards) == alone["requested"]
    assert _records(tmp_path / "out") == _records(tmp_path / "alone")
    assert (tmp_path / "out/shards/0-of-2/train.jsonl").is_file()
    with pytest.raises(UserError, match="--shard 2/2: expected I/N with 0 <= I < N"):
        parse_shard("2/2")


def test_a_reply_that_is_not_a_chat_completion_fails_its_item_with_the_reason(tmp_path):
    """A server (or proxy) answering 200 with something else: the item fails with one reason, the run goes on."""
    docs = _one_document(tmp_path / "docs")
    app = fastapi.FastAPI()
    app.post("/v1/chat/completions")(lambda: {"status": "queued"})
    with serve_in_background(app) as url:
        raw = _config(url, docs, tmp_path / "out", budget={"max_failure_rate": 1.0})
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
    assert report["failed"] == {
        "total": 3,
        "by_reason": {"questions: the server's reply is not a chat completion": 3},
    }
    assert (report["requested"], report["written"]["total"]) == (3, 0)
    assert (tmp_path / "out/train.jsonl").read_text() == ""
