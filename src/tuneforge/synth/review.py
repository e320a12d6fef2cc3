"""Human review of a synth dataset: edit, accept or reject each pair of OUT/train.jsonl, export the accepted ones.

The decisions live in OUT/review.json, keyed by a pair's id (a hash of its chunk id and its question as generated),
so they survive a re-run of synth (the journal gives the same pairs back) and a re-export gives the same file:

    {"pairs": {"ID": {"status": "accepted" | "rejected", "question": "edited", "answer": "edited"}}}

OUT/train.jsonl itself is never changed; OUT/reviewed.jsonl holds the accepted pairs, edits applied, in the same
layout (messages, alpaca or sharegpt: what `tuneforge train` reads), each marked `provenance.edited` when edited.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.io import atomic_write_json, atomic_write_text

STATUSES = ("pending", "accepted", "rejected")
# alpaca / sharegpt carry reasoning as an inline block ahead of the answer (output.record); an edit keeps it.
_THINK = re.compile(r"^(<think>\n.*?\n</think>\n\n)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Item:
    """One pair as the reviewer sees it: the generated record, the edits and the decision so far."""

    id: str
    record: dict[str, Any]
    question: str
    reasoning: str | None
    answer: str
    status: str
    edited: bool


def reviewed_file(out: Path) -> Path:
    """The export of the accepted pairs."""
    return out / "reviewed.jsonl"


def _review_file(out: Path) -> Path:
    return out / "review.json"


def pair_id(record: dict[str, Any]) -> str:
    """A pair's stable id: its chunk and its question as generated."""
    question = _texts(record)[0]
    return hashlib.sha256(f"{record['provenance']['chunk_id']}\n{question}".encode()).hexdigest()[:16]


def _texts(record: dict[str, Any]) -> tuple[str, str | None, str]:
    """(question, reasoning, answer) of a record in any of synth's layouts."""
    if "messages" in record:
        user, assistant = record["messages"][0], record["messages"][-1]
        return user["content"], assistant.get("reasoning_content"), assistant["content"]
    question = record["instruction"] if "instruction" in record else record["conversations"][0]["value"]
    _, reasoning, answer = _split(_raw_answer(record))
    return question, reasoning, answer


def _raw_answer(record: dict[str, Any]) -> str:
    """The answer field of an alpaca or sharegpt record (an inline think block included)."""
    return record["output"] if "instruction" in record else record["conversations"][-1]["value"]


def _split(text: str) -> tuple[str, str | None, str]:
    """(the think block as written, its reasoning, the answer) of an inline answer."""
    found = _THINK.match(text)
    if not found:
        return "", None, text
    return found.group(1), found.group(1)[len("<think>\n") : -len("\n</think>\n\n")], found.group(2)


def _edited(record: dict[str, Any], question: str, answer: str) -> dict[str, Any]:
    """The record with its question and answer replaced (the reasoning kept)."""
    out = copy.deepcopy(record)
    if "messages" in out:
        out["messages"][0]["content"], out["messages"][-1]["content"] = question, answer
        return out
    text = _split(_raw_answer(out))[0] + answer
    if "instruction" in out:
        out["instruction"], out["output"] = question, text
    else:
        out["conversations"][0]["value"], out["conversations"][-1]["value"] = question, text
    return out


def load(out: Path) -> list[Item]:
    """Every pair of OUT/train.jsonl with its review so far (pending where none)."""
    source = out / "train.jsonl"
    if not source.is_file():
        raise UserError(f"{source}: not found; run synth (the Data tab's Start) until it finishes")
    decisions = _decisions(out)
    items = []
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        key = pair_id(record)
        question, reasoning, answer = _texts(record)
        mine = decisions.get(key, {})
        edited = "question" in mine or "answer" in mine
        items.append(Item(key, record, mine.get("question", question), reasoning, mine.get("answer", answer),
                          mine.get("status", "pending"), edited))  # fmt: skip
    return items


def _decisions(out: Path) -> dict[str, dict[str, str]]:
    path = _review_file(out)
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["pairs"]


def decide(out: Path, key: str, status: str, question: str | None = None, answer: str | None = None) -> None:
    """Record a pair's decision, and its text where it differs from what was generated (an edit)."""
    if status not in STATUSES:
        raise UserError(f"review: status {status!r}: expected one of {', '.join(STATUSES)}")
    found = {item.id: item for item in load(out)}
    if key not in found:
        raise UserError(f"review: no pair {key} in {out / 'train.jsonl'}")
    generated_question, _, generated_answer = _texts(found[key].record)
    entry: dict[str, str] = {"status": status}
    if question is not None and question.strip() != generated_question:
        entry["question"] = question.strip()
    if answer is not None and answer.strip() != generated_answer:
        entry["answer"] = answer.strip()
    decisions = _decisions(out)
    if (question is None or answer is None) and key in decisions:  # a decision alone keeps an earlier edit
        entry = {**{k: v for k, v in decisions[key].items() if k != "status"}, **entry}
    decisions[key] = entry
    atomic_write_json(_review_file(out), {"pairs": decisions})


def accept_rest(out: Path) -> int:
    """Accept every pending pair; returns how many."""
    pending = [item.id for item in load(out) if item.status == "pending"]
    decisions = _decisions(out)
    for key in pending:
        decisions[key] = {**decisions.get(key, {}), "status": "accepted"}
    atomic_write_json(_review_file(out), {"pairs": decisions})
    return len(pending)


def export(out: Path) -> tuple[Path, int]:
    """Write the accepted pairs, edits applied, to OUT/reviewed.jsonl; its path and record count."""
    rows = []
    for item in load(out):
        if item.status != "accepted":
            continue
        record = _edited(item.record, item.question, item.answer) if item.edited else item.record
        if item.edited:
            record["provenance"] = {**record["provenance"], "edited": True}
        rows.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(reviewed_file(out), "".join(rows))
    return reviewed_file(out), len(rows)
