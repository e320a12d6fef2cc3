"""Preference data: pairwise and KTO formats, detection, errors, and token-exact rendering of both answers."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, needs_assets

from tuneforge.config import DatasetConfig, validate
from tuneforge.data.collate import PairCollator
from tuneforge.data.conversation import Preference
from tuneforge.data.formats import detect_format, to_preference
from tuneforge.data.render import IGNORE, render_preference
from tuneforge.data.sources import load_conversations
from tuneforge.errors import UserError
from tuneforge.objective import OBJECTIVES

quiet = {"log": lambda *_: None}
SHAREGPT_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def _roles(sample: Preference) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in sample.prompt.messages]


def test_ranking_layout_with_system():
    record = {
        "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}],
        "chosen": {"from": "gpt", "value": "<think>\ngreet\n</think>\n\nhello"},
        "rejected": {"from": "gpt", "value": "go away"},
    }
    assert detect_format(record, {}) == "ranking"
    sample = to_preference(record, "ranking", {})
    assert _roles(sample) == [("system", "be brief"), ("user", "hi")]
    assert (sample.chosen.reasoning, sample.chosen.content) == ("greet", "hello")
    assert (sample.rejected.reasoning, sample.rejected.content) == (None, "go away")


def test_trl_plain_and_conversational_and_messages_layouts():
    plain = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "system": "math"}
    conversational = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    messages = {
        "messages": [{"role": "user", "content": "2+2?"}],
        "chosen": {"role": "assistant", "content": "4"},
        "rejected": {"role": "assistant", "content": "5"},
    }
    assert [detect_format(r, {}) for r in (plain, conversational, messages)] == [
        "preference",
        "preference",
        "messages_preference",
    ]
    samples = [
        to_preference(plain, "preference", {}),
        to_preference(conversational, "preference", {}),
        to_preference(messages, "messages_preference", {}),
    ]
    assert _roles(samples[0]) == [("system", "math"), ("user", "2+2?")]
    assert all(
        _roles(s)[-1] == ("user", "2+2?") and (s.chosen.content, s.rejected.content) == ("4", "5") for s in samples
    )


def test_kto_label_picks_the_side_and_columns_rename():
    good = to_preference({"q": "hi", "completion": "hello", "label": True}, "kto", {"prompt": "q"})
    bad = to_preference({"prompt": "hi", "completion": "go away", "label": False}, "kto", {})
    assert (good.chosen.content, good.rejected) == ("hello", None)
    assert (bad.chosen, bad.rejected.content) == (None, "go away")
    with pytest.raises(ValueError, match=r"label: expected true \(desirable\) or false"):
        to_preference({"prompt": "hi", "completion": "x", "label": "yes"}, "kto", {})


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "hi", "chosen": "a", "rejected": ""}, r"empty value\(s\) rejected=''"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "b",
                "rejected": "c",
            },
            "the prompt must end with a user",
        ),
        (
            {"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "c"},
            "chosen: expected an assistant answer, got role 'user'",
        ),
    ],
)
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(ValueError, match=message):
        to_preference(record, "preference", {})


def test_objective_and_format_must_match(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "hi {{name}}", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(
        UserError,
        match=r"pairs.jsonl:1: format 'preference' holds chosen/rejected pairs .* "
        r"method.objective: sft trains on conversations",
    ):
        load_conversations(DatasetConfig(path=str(path)), **quiet)
    ds = DatasetConfig(path=str(path), system="sys", placeholders={"name": "Ann"})
    [sample] = load_conversations(ds, objective=OBJECTIVES["dpo"], **quiet)
    assert _roles(sample) == [("system", "sys"), ("user", "hi Ann")]


def _raw_messages(record: dict) -> list[dict]:
    """The LLaMA-Factory ranking record's prompt as chat-template messages, read straight from the JSON."""
    return [{"role": SHAREGPT_ROLE[t["from"]], "content": t["value"]} for t in record["conversations"]]


@needs_assets
@pytest.mark.parametrize("name", ["dpo_zh_demo.json", "dpo_en_demo.json"])
@pytest.mark.parametrize("thinking", [False, True])
def test_every_pair_renders_as_the_template_does(qwen3_tokenizer, name, thinking):
    records = json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
    tok = qwen3_tokenizer
    for i, record in enumerate(records):
        if thinking:  # the thinking variant: both answers carry reasoning
            record = {
                **record,
                **{
                    side: {"from": "gpt", "value": f"<think>\nwhy {side} {i}\n</think>\n\n{record[side]['value']}"}
                    for side in ("chosen", "rejected")
                },
            }
        r = render_preference(to_preference(record, "ranking", {}), tok)
        for side in ("chosen", "rejected"):
            answer = {"role": "assistant", "content": record[side]["value"]}
            expected = tok.apply_chat_template(
                _raw_messages(record) + [answer], tokenize=True, enable_thinking=thinking, return_dict=False
            )
            assert r.prompt_ids + getattr(r, f"{side}_ids") == expected, (name, i, side)
            trained = tok.decode(getattr(r, f"{side}_ids")[: getattr(r, f"{side}_trained")])
            assert trained.endswith("<|im_end|>")
            # Non-thinking pairs keep the empty think block on the prompt side; thinking ones train their block.
            assert trained.startswith("<think>\nwhy") == thinking
        prompt_text = tok.decode(r.prompt_ids)
        assert prompt_text.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))


@needs_assets
def test_mixed_thinking_pair_scores_the_empty_block_with_its_answer(qwen3_tokenizer):
    sample = to_preference({"prompt": "q", "chosen": "<think>\nr\n</think>\n\na", "rejected": "b"}, "preference", {})
    r = render_preference(sample, qwen3_tokenizer)
    assert qwen3_tokenizer.decode(r.prompt_ids).endswith("<|im_start|>assistant\n")
    assert qwen3_tokenizer.decode(r.rejected_ids[: r.rejected_trained]) == "<think>\n\n</think>\n\nb<|im_end|>"
    assert qwen3_tokenizer.decode(r.chosen_ids[: r.chosen_trained]) == "<think>\nr\n</think>\n\na<|im_end|>"
    assert IGNORE not in r.prompt_ids


def _method(**method) -> None:
    validate({"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "d"}]}, "output": {"dir": "o"}, **method})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"method": {"objective": "orpo", "reference": "precomputed", "simpo_gamma": 1.0}},
            "config: method.reference: reference, simpo_gamma have no effect with method.objective: orpo; remove them",
        ),
        (
            {"method": {"objective": "dpo", "desirable_weight": 2.0}},
            "config: method.desirable_weight: desirable_weight has no effect with method.objective: dpo",
        ),
        (
            {"method": {"objective": "kto"}, "train": {"per_device_batch_size": 1}},
            "config: train.per_device_batch_size: kto estimates its KL term from the other answers of a batch, so it "
            "needs at least 2 (got 1)",
        ),
        (
            {"method": {"type": "full", "adapter": "runs/sft"}},
            "config: method.adapter: adapter has no effect with method.type: full",
        ),
        (
            {"method": {"adapter": "runs/sft", "rank": 16}},
            "config: method.rank: rank has no effect with method.adapter: runs/sft; remove it",
        ),
    ],
)
def test_objective_settings_are_checked(sections, message):
    with pytest.raises(UserError) as err:
        _method(**sections)
    assert str(err.value).startswith(message)


def test_objective_formats_orpo_simpo_pairs_kto_labelled(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    labelled = tmp_path / "kto.jsonl"
    labelled.write_text(json.dumps({"prompt": "hi", "completion": "a", "label": False}) + "\n")
    for objective in ("orpo", "simpo"):
        [sample] = load_conversations(DatasetConfig(path=str(pairs)), objective=OBJECTIVES[objective], **quiet)
        assert (sample.chosen.content, sample.rejected.content) == ("a", "b")
    [sample] = load_conversations(DatasetConfig(path=str(labelled)), objective=OBJECTIVES["kto"], **quiet)
    assert (sample.chosen, sample.rejected.content) == (None, "a")
    with pytest.raises(
        UserError,
        match=r"kto.jsonl:1: format 'kto' holds labelled answers \(kto\), but "
        r"method.objective: dpo trains on chosen/rejected pairs",
    ):
        load_conversations(DatasetConfig(path=str(labelled)), objective=OBJECTIVES["dpo"], **quiet)
    with pytest.raises(
        UserError,
        match=r"pairs.jsonl:1: format 'preference' holds chosen/rejected pairs "
        r"\(dpo, orpo, simpo\), but method.objective: kto trains on labelled answers",
    ):
        load_conversations(DatasetConfig(path=str(pairs)), objective=OBJECTIVES["kto"], **quiet)


def test_pair_collator_splits_rows_as_orpo_and_cpo_read_them():
    samples = [
        {
            "prompt_ids": [1, 2],
            "chosen_ids": [3, 4, 9],
            "rejected_ids": [5],
            "chosen_trained": 2,
            "rejected_trained": 1,
        },
        {"prompt_ids": [6], "chosen_ids": [7], "rejected_ids": [8, 8], "chosen_trained": 1, "rejected_trained": 2},
    ]
    batch = PairCollator(pad_token_id=0)(samples)
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 3, 4, 9], [6, 7, 0, 0, 0]]
    assert batch["chosen_labels"].tolist() == [[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 7] + [IGNORE] * 3]
    assert batch["rejected_input_ids"].tolist() == [[1, 2, 5, 0, 0], [6, 8, 8, 0, 0]]
    assert batch["rejected_labels"].tolist() == [[IGNORE, IGNORE, 5, IGNORE, IGNORE], [IGNORE, 8, 8, IGNORE, IGNORE]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    # The stacked rows (chosen, then rejected) stay for the token counts.
    assert batch["input_ids"].shape == (4, 5) and batch["completion_mask"].sum() == 6


@needs_assets
def test_data_preview_and_render_show_each_answer(tmp_path, tiny_qwen3_dir, qwen3_tokenizer):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    prompt = [{"role": "user", "content": "2+2?"}]
    expected = {
        answer: qwen3_tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=True, enable_thinking=False, return_dict=False
        )
        for answer in ("4", "5")
    }
    for objective, record in (
        ("dpo", {"prompt": "2+2?", "chosen": "4", "rejected": "5"}),
        ("kto", {"prompt": "2+2?", "completion": "5", "label": False}),
    ):
        data = tmp_path / f"{objective}.jsonl"
        data.write_text(json.dumps(record) + "\n")
        config = tmp_path / f"{objective}.yaml"
        config.write_text(
            json.dumps(
                {
                    "model": {"name_or_path": str(tiny_qwen3_dir)},
                    "data": {"datasets": [{"path": str(data)}], "cache_dir": str(tmp_path / "cache")},
                    "method": {"objective": objective},
                    "train": {"per_device_batch_size": 2},
                    "output": {"dir": str(tmp_path / "run")},
                }
            )
        )
        shown = CliRunner().invoke(app, ["data", "preview", str(config), "-n", "1"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        out = tmp_path / f"{objective}-rendered.jsonl"
        written = CliRunner().invoke(app, ["data", "render", str(config), "--out", str(out)])
        assert written.exit_code == 0, written.output
        [row] = [json.loads(line) for line in out.read_text().splitlines()]
        # Trained: the answer and <|im_end|> (2 tokens); the template's newline after it is not.
        if objective == "dpo":
            for side, answer in (("chosen", "4"), ("rejected", "5")):
                assert f"sample 0 {side}: {len(expected[answer])} tokens, 2 trained" in shown.output
                assert row[side]["input_ids"] == expected[answer]
                trained = [t for t, label in zip(row[side]["input_ids"], row[side]["labels"]) if label != IGNORE]
                assert qwen3_tokenizer.decode(trained) == f"{answer}<|im_end|>"
        else:
            assert f"sample 0 undesirable (label False): {len(expected['5'])} tokens, 2 trained" in shown.output
            assert (row["label"], row["input_ids"]) == (False, expected["5"])
            assert [label for label in row["labels"] if label != IGNORE] == expected["5"][-3:-1]


def test_config_check_names_a_missing_adapter(tmp_path):
    from tuneforge.config import check_local_files

    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    raw = {"model": {"name_or_path": "Qwen/Qwen3-8B"}, "data": {"datasets": [{"path": str(data)}]}}
    cfg = validate({**raw, "method": {"adapter": str(tmp_path / "sft")}, "output": {"dir": "o"}})
    with pytest.raises(UserError) as err:
        check_local_files(cfg)
    assert str(err.value) == f"method.adapter: {tmp_path / 'sft'}: not found"


def test_trl_still_tiles_its_fused_lm_head_by_the_constant_we_narrow_on_cpu():
    import inspect

    import trl.trainer.utils as trl_utils

    # train/preference.py CPU_VOCAB_TILE narrows this module constant; a TRL that renames it would ignore ours.
    assert "_CHUNKED_LOGPROB_CHUNK_SIZE" in inspect.getsource(trl_utils.add_fused_lm_head)
