"""Formats, file types, mixing and splitting."""

from __future__ import annotations

import json

import pytest

from tuneforge.config import DataConfig, DatasetConfig
from tuneforge.data.conversation import Message
from tuneforge.data.formats import detect_format, to_conversation
from tuneforge.data.sources import build_conversations, load_conversations
from tuneforge.objective import SFT

quiet = {"log": lambda *_: None}


def test_alpaca_input_history_system():
    conv = to_conversation(
        {"instruction": "翻译", "input": "hello", "output": "你好", "system": "sys", "history": [["q1", "a1"]]},
        "alpaca",
        {},
    )
    assert [(m.role, m.content) for m in conv.messages] == [
        ("system", "sys"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "翻译\nhello"),
        ("assistant", "你好"),
    ]


def test_alpaca_empty_input_is_not_appended():
    conv = to_conversation({"instruction": "hi", "input": "", "output": "yo"}, "alpaca", {})
    assert conv.messages[0].content == "hi"


def test_think_block_in_answer_is_split():
    conv = to_conversation({"query": "q", "response": "<think>想\n</think>\n答"}, "query_response", {})
    assert conv.messages[-1] == Message("assistant", "答", reasoning="想")


def test_sharegpt_function_call_and_observation():
    record = {
        "conversations": [
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {"city": "x"}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ],
        "tools": '[{"name": "w", "parameters": {}}]',
    }
    conv = to_conversation(record, "sharegpt", {})
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "assistant"]
    assert conv.messages[1].tool_calls[0].name == "w" and conv.messages[1].tool_calls[0].arguments == {"city": "x"}
    assert conv.tools == [{"type": "function", "function": {"name": "w", "parameters": {}}}]


def test_messages_with_reasoning_content():
    conv = to_conversation(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "r"},
            ]
        },
        "messages",
        {},
    )
    assert conv.messages[1] == Message("assistant", "a", reasoning="r")


def test_reasoning_defaults_and_columns_override():
    conv = to_conversation({"Question": "q", "Complex_CoT": "c", "Response": "r"}, "reasoning", {})
    assert conv.messages[1] == Message("assistant", "r", reasoning="c")
    conv = to_conversation(
        {"ask": "q", "cot": "c", "ans": "r"}, "reasoning", {"question": "ask", "reasoning": "cot", "answer": "ans"}
    )
    assert conv.messages[1] == Message("assistant", "r", reasoning="c")


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"conversations": []}, "sharegpt"),
        ({"messages": [{}]}, "messages"),
        ({"Question": "q", "Complex_CoT": "c", "Response": "r"}, "reasoning"),
        ({"query": "q", "response": "r"}, "query_response"),
        ({"foo": "bar"}, None),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record, {}) == expected


def _write_all_types(folder):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    (folder / "a.json").write_text(json.dumps(rows[:1]), encoding="utf-8")
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:2]), encoding="utf-8")
    (folder / "c.csv").write_text("instruction,input,output\nq2,,a2\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows[3:]), folder / "d.parquet")


def test_folder_of_every_file_type(tmp_path):
    _write_all_types(tmp_path)
    convs = load_conversations(DatasetConfig(path=str(tmp_path)), **quiet)
    assert sorted(c.messages[0].content for c in convs) == ["q0", "q1", "q2", "q3"]


def test_default_system_prompt_and_placeholders(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "你是谁", "output": "我是{{NAME}}，来自{{author}}"}]), encoding="utf-8")
    conv = load_conversations(
        DatasetConfig(
            path=str(path), system="现在你要扮演皇帝身边的女人--甄嬛", placeholders={"name": "N", "author": "A"}
        ),
        **quiet,
    )[0]
    assert conv.messages[0] == Message("system", "现在你要扮演皇帝身边的女人--甄嬛")
    assert conv.messages[-1].content == "我是N，来自A"


def _dataset(tmp_path, name, n, key):
    path = tmp_path / name
    path.write_text(json.dumps([{"instruction": f"{key}{i}", "output": "x"} for i in range(n)]), encoding="utf-8")
    return {"path": str(path)}


def test_weighted_mix_keeps_ratio_and_counts(tmp_path):
    cfg = DataConfig(
        datasets=[
            {**_dataset(tmp_path, "r.json", 30, "r"), "weight": 0.75},
            {**_dataset(tmp_path, "c.json", 100, "c"), "weight": 0.25},
        ],
        val_size=0.1,
    )
    lines = []
    train, val = build_conversations(cfg, log=lines.append, objective=SFT)
    everything = train + val
    reasoning = sum(c.messages[0].content.startswith("r") for c in everything)
    assert (reasoning, len(everything) - reasoning) == (30, 10)  # 75 / 25, the scarcest set used whole
    assert (len(train), len(val)) == (36, 4)
    r, c = (ds.path for ds in cfg.datasets)
    counts = f"{r}: 30 of 30 (75.0 %), {c}: 10 of 100 (25.0 %)"
    assert lines[-1] == f"data: mixed 40 samples, {counts} → train 36, validation 4"


def test_unweighted_mix_counts_every_dataset(tmp_path):
    cfg = DataConfig(datasets=[_dataset(tmp_path, "a.json", 6, "a"), {**_dataset(tmp_path, "b.json", 9, "b")}])
    lines = []
    build_conversations(cfg, log=lines.append, objective=SFT)
    a, b = (ds.path for ds in cfg.datasets)
    assert lines[-1] == f"data: mixed 15 samples, {a}: 6 of 6 (40.0 %), {b}: 9 of 9 (60.0 %) → train 15, validation 0"


def test_unfilled_placeholders_warn_with_counts(tmp_path):
    path = tmp_path / "d.json"
    rows = [
        {"instruction": "你是谁", "output": "我是{{name}}，来自{{author}}"},
        {"instruction": "who", "output": "I am {{name}}", "system": "{{NAME}} speaks"},
        {"instruction": "{{ spaced }} is no placeholder", "output": "{{author}} made me"},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    lines = []
    convs = load_conversations(DatasetConfig(path=str(path), placeholders={"author": "A"}), log=lines.append)
    assert lines == [
        f"{path}: format auto → alpaca",
        f"warning: {path}: {{{{NAME}}}} is left unfilled in 1 of 3 records; "
        "set it in this dataset's placeholders: {NAME: ...}",
        f"warning: {path}: {{{{name}}}} is left unfilled in 2 of 3 records; "
        "set it in this dataset's placeholders: {name: ...}",
    ]
    assert convs[2].messages[-1].content == "A made me"
    lines.clear()
    load_conversations(DatasetConfig(path=str(path), placeholders={"name": "N", "author": "A"}), log=lines.append)
    assert lines == [f"{path}: format auto → alpaca"]  # {{name}} also fills {{NAME}}


def test_max_samples_and_seeded_split(tmp_path):
    cfg = DataConfig(datasets=[{**_dataset(tmp_path, "a.json", 50, "a"), "max_samples": 20}], val_size=5, seed=3)
    first = build_conversations(cfg, **quiet, objective=SFT)
    second = build_conversations(cfg, **quiet, objective=SFT)
    assert (len(first[0]), len(first[1])) == (15, 5)
    assert [c.to_json() for c in first[0]] == [c.to_json() for c in second[0]]
