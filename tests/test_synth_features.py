"""synth's generation features against the scripted server: genre/audience variations, synthesized reasoning,
follow-up turns, domain tags and preference pairs (weak model, rated); exact records and exact accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from synth_server import WEAK, ScriptedServer, free_tag, reasoning_for, second_answer, weak_answer
from test_synth_run import _config, _docs, _records
from typer.testing import CliRunner

from tuneforge.config import DatasetConfig
from tuneforge.data.render import render
from tuneforge.data.sources import load_conversations
from tuneforge.errors import UserError
from tuneforge.objective import OBJECTIVES
from tuneforge.synth.config import validate_synth
from tuneforge.synth.output import train_snippet
from tuneforge.synth.run import synth

VARIATIONS = [
    {"genre": "exam question", "audience": "new employee"},
    {"genre": "support ticket", "audience": "auditor"},
]
TAGS = ["safety", "maintenance", "access"]
OWN = ("Looking for ", "The text answers ")  # the scripted server's own reasoning (reasoning_content, inline)


def _small_docs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.md").write_text(
        "# Filters\n\nThe filter is replaced every spring by the night shift. The date is written in the log.\n\n"
        "# Badges\n\nVisitors get a red badge at the desk. Badges are returned when they leave.\n",
        encoding="utf-8",
    )
    (folder / "b.md").write_text("# 维护\n\n过滤器每年春天更换一次。更换后要记录日期和操作人员的名字。\n", "utf-8")
    return folder


def _expected_reasoning(question: str, message: dict) -> tuple[str, bool]:
    """The reasoning a turn must carry: the server's own when it gave one, else the synthesized one."""
    own = message.get("reasoning_content", "")
    if own.startswith(OWN):
        assert own in (f"Looking for {question[:40]}.", f"The text answers {question[:40]}.")
        return own, False
    return reasoning_for(question), True


@pytest.mark.slow  # 55-75 s on 2 loaded cores: injected timeouts wait out the client's timeout
def test_variations_synthesized_reasoning_follow_ups_and_tags_with_faults(tmp_path):
    """Every feature at once under injected faults: each record is exactly what the script gives, and
    requested = written + failed + filtered with every failure of the new steps counted by its reason."""
    docs = _docs(tmp_path / "docs")
    gen = {"questions_per_chunk": 2, "variations": VARIATIONS, "reasoning": "synthesize", "follow_ups": 2}
    with ScriptedServer(timeout_sleep=3.5) as server:
        raw = _config(server.url, docs, tmp_path / "out", generate={**gen, "tags": TAGS})
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
        ledger = server.ledger
    train, held = _records(tmp_path / "out")
    records = train + held
    assert report["written"]["total"] == len(records) > 0
    # Questions were asked once per (chunk, variation): 2 slots each.
    assert report["requested"] == 2 * 2 * report["chunks"]
    assert report["requested"] == report["written"]["total"] + report["failed"]["total"] + report["filtered"]["total"]
    assert report["failed"]["total"] == ledger.hopeless_items > 0
    assert set(report["failed"]["by_reason"]) <= {
        f"{step}: invalid JSON after one retry (not JSON)" for step in ("questions", "judge", "follow_up", "tags")
    }
    after_judge = sum(n for r, n in report["failed"]["by_reason"].items() if r.startswith(("follow_up", "tags")))
    assert len(records) == len(ledger.judged_pass) - after_judge  # judged pairs lost later are the counted failures
    synthesized, own = set(), set()
    for r in records:
        messages, source = r["messages"], r["provenance"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        q1 = messages[0]["content"]
        assert (q1, messages[1]["content"]) in ledger.judged_pass
        assert source["variation"] in VARIATIONS and f"[{source['variation']['genre']}]" in q1
        for turn in (1, 2):
            question, reply = messages[2 * turn], messages[2 * turn + 1]
            assert question["content"].startswith(f"Follow-up {turn} (")
            assert reply["content"].startswith(f"{question['content']} — ")
        for question, reply in zip(messages[::2], messages[1::2]):
            reasoning, made = _expected_reasoning(question["content"], reply)
            assert reply["reasoning_content"] == reasoning and "<think>" not in reply["content"]
            (synthesized if made else own).add(question["content"])
        assert source.get("reasoning_synthesized", False) == any(
            _expected_reasoning(q["content"], a)[1] for q, a in zip(messages[::2], messages[1::2])
        )
        assert len(r["tags"]) == 1 and r["tags"][0] in TAGS
        assert {"questions_variation", "answer", "judge", "follow_up", "tags"} <= set(source["templates"])
    # Reasoning was asked for exactly the answers without their own (each once); the rest belong to pairs a
    # later step failed.
    reasoned = server.ledger.reasoned
    assert (
        synthesized and own and len(reasoned) == len(set(reasoned)) == report["requests"]["sent_by_step"]["reasoning"]
    )
    assert synthesized <= set(reasoned) and not own & set(reasoned)
    # The tags schema refused tags outside the list (the script names one at first): asked again, then valid.
    assert report["requests"]["sent_by_step"]["tags"] > sum(1 for _ in records)
    # The whole conversation, reasoning included, is read by train as it is.
    loaded = load_conversations(DatasetConfig(path=str(tmp_path / "out/train.jsonl"), format="messages"), log=print)
    assert [len(c.messages) for c in loaded] == [6] * len(train)


def test_synthesized_reasoning_renders_as_qwen3_thinking(tmp_path, qwen3_tokenizer):
    """A record whose reasoning was synthesized renders to <think>reasoning</think>answer token-exactly."""
    docs = _small_docs(tmp_path / "docs")
    with ScriptedServer(faults=False) as server:
        raw = _config(
            server.url, docs, tmp_path / "out", generate={"questions_per_chunk": 2, "reasoning": "synthesize"}
        )
        raw["quality"] = {"judge": False}
        synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
    train, held = _records(tmp_path / "out")
    made = [r for r in train + held if r["provenance"].get("reasoning_synthesized")]
    assert made
    path = tmp_path / "made.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
    for record, conv in zip(made, load_conversations(DatasetConfig(path=str(path), format="messages"), log=print)):
        question, answer = record["messages"][0]["content"], record["messages"][1]["content"]
        assert record["messages"][1]["reasoning_content"] == reasoning_for(question)
        rendered = render(conv, qwen3_tokenizer)
        prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        output = f"<think>\n{reasoning_for(question)}\n</think>\n\n{answer}<|im_end|>"
        ids = qwen3_tokenizer(prompt + output + "\n", add_special_tokens=False)["input_ids"]
        assert rendered.input_ids == ids
        trained = [i for i, label in zip(rendered.input_ids, rendered.labels) if label != -100]
        assert trained == qwen3_tokenizer(output, add_special_tokens=False)["input_ids"]


def test_reasoning_drop_and_free_tags(tmp_path):
    """reasoning: drop writes no reasoning at all; tags: free writes the model's own tags."""
    docs = _small_docs(tmp_path / "docs")
    with ScriptedServer(faults=False) as server:
        gen = {"questions_per_chunk": 2, "reasoning": "drop", "tags": "free"}
        quality = {"judge": False, "dedup_threshold": None}
        raw = _config(server.url, docs, tmp_path / "out", generate=gen, quality=quality)
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
    train, held = _records(tmp_path / "out")
    assert len(train + held) == report["written"]["total"] == report["requested"] > 0
    for r in train + held:
        assert [set(m) for m in r["messages"]] == [{"role", "content"}] * 2
        assert len(r["tags"]) == 1 and r["tags"][0].startswith("topic-")
    assert len({r["tags"][0] for r in train + held}) > 1 and free_tag("x") == "topic-x"
    # Nothing failed or was filtered: the plan the web UI shows (a questions request per chunk, an answer and a tags
    # request per pair) is what was sent.
    progress = json.loads((tmp_path / "out/progress.json").read_text())
    assert progress["stage"] == "done" and progress["requests_planned"] == report["requests"]["sent"]
    assert report["requests"]["sent"] == report["chunks"] + 2 * report["requested"]


def _preference(out: Path, name: str = "preference.jsonl") -> list[dict]:
    path = out / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_weak_model_pairs_from_another_endpoint_load_for_dpo(tmp_path):
    """source: weak_model: chosen = the model's answer, rejected = the weak model's, asked of its own server;
    the file loads as preference pairs for method.objective: dpo."""
    docs = _small_docs(tmp_path / "docs")
    with ScriptedServer(faults=False) as server, ScriptedServer(faults=False) as weak_server:
        raw = _config(server.url, docs, tmp_path / "out", generate={"questions_per_chunk": 2})
        raw["preference"] = {"source": "weak_model", "weak": {"name": WEAK, "endpoint": weak_server.url}}
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
        assert len(weak_server.ledger.delivered) == report["written"]["total"]  # only the weak answers went there
    train, held = _records(tmp_path / "out")
    pairs = _preference(tmp_path / "out") + _preference(tmp_path / "out", "preference_eval.jsonl")
    assert report["preference"] == {
        "requested": len(train + held),
        "written": len(pairs),
        "failed": {"total": 0, "by_reason": {}},
        "filtered": {"total": 0, "by_reason": {}},
    }
    sft = {r["messages"][0]["content"]: r["messages"][1] for r in train + held}
    for p in pairs:
        question = p["messages"][0]["content"]
        assert p["chosen"] == sft[question]  # the model's answer with its own reasoning
        assert p["rejected"] == {"role": "assistant", "content": weak_answer(question)}
        assert p["provenance"]["preference"] == {"source": "weak_model", "rejected_model": WEAK}
    loaded = load_conversations(
        DatasetConfig(path=str(tmp_path / "out/preference.jsonl"), format="messages_preference"),
        log=print,
        objective=OBJECTIVES["dpo"],
    )
    assert [(s.chosen.content, s.rejected.content) for s in loaded] == [
        (p["chosen"]["content"], p["rejected"]["content"]) for p in _preference(tmp_path / "out")
    ]


def test_rated_pairs_choose_the_higher_score_and_count_ties(tmp_path):
    """source: rated: a second sample rated by the judge; chosen = the higher score, ties filtered and counted."""
    docs = _docs(tmp_path / "docs")
    with ScriptedServer(faults=False) as server:
        raw = _config(server.url, docs, tmp_path / "out", generate={"questions_per_chunk": 3})
        raw["preference"] = {"source": "rated"}
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
        scores = server.ledger.scores
    train, held = _records(tmp_path / "out")
    expected, ties = {}, 0
    for r in train + held:
        question, first = r["messages"][0]["content"], r["messages"][1]
        second = {"role": "assistant", "content": second_answer(question)}
        one, two = scores[(question, first["content"])][0], scores[(question, second["content"])][0]
        if one == two:
            ties += 1
        else:
            expected[question] = (first, second, [one, two]) if one > two else (second, first, [two, one])
    pairs = _preference(tmp_path / "out") + _preference(tmp_path / "out", "preference_eval.jsonl")
    assert {
        p["messages"][0]["content"]: (p["chosen"], p["rejected"], p["provenance"]["preference"]["scores"])
        for p in pairs
    } == expected
    assert ties > 0 and len(expected) > 0
    assert report["preference"]["filtered"] == {
        "total": ties,
        "by_reason": {"preference: tie (both answers rated the same)": ties},
    }
    assert report["preference"]["requested"] == len(train + held) == len(pairs) + ties


def test_config_checks_of_the_new_keys():
    """Unknown keys name the closest one; inconsistent choices are refused with the key to change."""
    base = {"docs": "d", "out": "o", "model": {"endpoint": "http://x", "name": "m"}}
    cases = [
        ({"generate": {"follow_up": 2}}, "unknown key 'generate.follow_up'; did you mean 'generate.follow_ups'?"),
        (
            {"generate": {"variations": [{"genre": "a", "audiense": "b"}]}},
            "missing required key 'generate.variations.0.audience'\nsynth.yaml: unknown key "
            "'generate.variations.0.audiense'; did you mean 'generate.variations.0.audience'?",
        ),
        (
            {"preference": {"source": "weak_model"}},
            "preference: Value error, preference.weak is needed with source: weak_model and only there "
            "(got {'source': 'weak_model'})",
        ),
        (
            {"preference": {"source": "rated"}, "quality": {"judge": False}},
            "preference.source: rated needs quality.judge: true (the judge rates both samples)",
        ),
        (
            {"generate": {"follow_ups": 1}, "output": {"format": "alpaca"}},
            "generate.follow_ups: alpaca holds one turn; use output.format messages or sharegpt",
        ),
        (
            {"generate": {"reasoning": "invent"}},
            "generate.reasoning: Input should be 'keep', 'synthesize' or 'drop' (got 'invent')",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(UserError) as raised:
            validate_synth({**base, **extra}, "synth.yaml")
        assert str(raised.value) == f"synth.yaml: {message}"


@pytest.mark.slow  # trains a tiny model for 2 DPO steps (about 4 min on 2 cores shared by 7 sessions)
def test_dpo_trains_on_synth_preference_pairs(tiny_qwen3_dir, tmp_path):
    """The preference file trains with `tuneforge train` and method.objective: dpo as it is."""
    docs = _small_docs(tmp_path / "docs")
    with ScriptedServer(faults=False) as server:
        raw = _config(server.url, docs, tmp_path / "out", generate={"questions_per_chunk": 3})
        raw |= {"quality": {"judge": False}, "output": {"eval_fraction": 0.0}}
        raw["preference"] = {"source": "weak_model", "weak": {"name": WEAK}}
        report = synth(validate_synth(raw, "test"), "EMPTY", log=lambda *_: None)
    assert report["preference"]["written"] == report["written"]["total"] > 0
    snippet = yaml.safe_load(train_snippet(tmp_path / "out", "messages", preference=True))  # what synth prints
    config = {
        "model": {"name_or_path": str(tiny_qwen3_dir), "init": "random"},
        "data": {**snippet["data"], "max_length": 256, "cache_dir": str(tmp_path / "cache")},
        "method": {"type": "lora", "rank": 4, "alpha": 8, **snippet["method"]},
        "train": {"max_steps": 2, "per_device_batch_size": 2, "save_steps": 1000, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    from tuneforge.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "train.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["objective"] == "dpo" and summary["steps"] == 2
