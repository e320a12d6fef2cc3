"""GRPO prompts: real GSM8K / MATH / CMMLU / conversation records, rendered token-exactly as `chat` prompts them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import ASSETS, needs_assets

from tuneforge.config import DataConfig, validate
from tuneforge.data.conversation import Message
from tuneforge.data.prompts import prepare_prompts, prompt_dataset, to_prompt
from tuneforge.errors import UserError

GSM8K = ASSETS / "eval" / "gsm8k" / "gsm8k_test_first200.jsonl"
MATH500 = ASSETS / "eval" / "math500" / "math500_test.jsonl"
CMMLU = ASSETS / "eval" / "cmmlu" / "data" / "dev" / "agronomy.csv"


def grpo_config(path, rewards=("accuracy",), **data) -> object:
    return validate(
        {
            "model": {"name_or_path": "unused"},
            "data": {"datasets": [{"path": str(path), **data.pop("dataset", {})}], **data},
            "method": {"objective": "grpo", "grpo": {"rewards": [{"name": r} for r in rewards]}},
            "output": {"dir": "unused"},
        }
    )


@needs_assets
@pytest.mark.parametrize("thinking", ["auto", "off"])
def test_prompt_ids_are_exactly_what_chat_feeds_the_model(qwen3_tokenizer, thinking):
    from tuneforge.infer.engine import Engine
    from tuneforge.train.grpo import GRPOTrainer

    data = prepare_prompts(grpo_config(GSM8K, thinking=thinking), qwen3_tokenizer, log=lambda *_: None)
    question = json.loads(GSM8K.read_text().splitlines()[0])["question"]
    # What `tuneforge chat` sends for the same question (Engine.render, then the engine's tokenizing).
    chat_text = Engine.render(
        SimpleNamespace(tokenizer=qwen3_tokenizer), [Message("user", question)], enable_thinking=thinking != "off"
    )
    assert data[0]["prompt"] == chat_text
    closing = "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if thinking == "off" else "")
    assert chat_text == f"<|im_start|>user\n{question}<|im_end|>\n{closing}"
    # The ids TRL samples from (our _tokenize_prompts) are the chat template's own, special tokens included.
    ids, _, _ = GRPOTrainer._tokenize_prompts(SimpleNamespace(processing_class=qwen3_tokenizer), [data[0]["prompt"]])
    expected = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        enable_thinking=thinking != "off",
        tokenize=True,
        return_dict=False,
    )
    assert ids == [expected] and expected[:1] == [qwen3_tokenizer.convert_tokens_to_ids("<|im_start|>")]
    assert data[0]["length"] == len(expected)


@needs_assets
def test_references_of_real_math_and_mcq_sets(qwen3_tokenizer):
    silent = {"log": lambda *_: None}
    gsm8k = prepare_prompts(grpo_config(GSM8K), qwen3_tokenizer, **silent)
    assert len(gsm8k) == 200 and gsm8k["answer"][:3] == ["18", "3", "70000"]
    math = prepare_prompts(grpo_config(MATH500), qwen3_tokenizer, **silent)
    assert math["answer"][0] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    cmmlu = prepare_prompts(grpo_config(CMMLU, rewards=("choice",)), qwen3_tokenizer, **silent)
    assert cmmlu["answer"][0] == "C"
    assert "肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿<|im_end|>" in cmmlu["prompt"][0]


def test_conversation_prompt_is_cut_after_the_last_user_turn(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "It is \\boxed{6}."},
        ]
    }
    sample = to_prompt(record, DataConfig(datasets=[{"path": "x"}]).datasets[0])
    assert [(m.role, m.content) for m in sample.conversation.messages] == [
        ("system", "Be brief."),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
    ]
    assert sample.answer == "It is \\boxed{6}."  # math-verify reads the box


@needs_assets
def test_tools_travel_with_the_prompt(qwen3_tokenizer, data_copy):
    path = data_copy("glaive_toolcall_en_demo.json")
    data = prepare_prompts(grpo_config(path, rewards=("tool_call",)), qwen3_tokenizer, log=lambda *_: None)
    tools = json.loads(data["tools"][0])
    assert tools and tools[0]["function"]["name"] in data["prompt"][0]  # the template lists them in the system turn
    assert data["prompt"][0].endswith("<|im_start|>assistant\n")


def test_missing_answer_column_is_one_line_with_the_key(tmp_path, qwen3_tokenizer):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "solution_text": "2"}) + "\n")
    with pytest.raises(UserError) as err:
        prepare_prompts(grpo_config(path), qwen3_tokenizer, log=lambda *_: None)
    message = str(err.value)
    assert message.startswith(f"{path}:1: no reference answer") and "data.datasets.0.columns" in message
    assert "\n" not in message
    # Mapped, it reads; rewards without a reference need none.
    mapped = grpo_config(path, dataset={"columns": {"answer": "solution_text"}})
    assert prepare_prompts(mapped, qwen3_tokenizer, log=lambda *_: None)["answer"] == ["2"]
    unanswered = prepare_prompts(grpo_config(path, rewards=("format",)), qwen3_tokenizer, log=lambda *_: None)
    assert unanswered["answer"] == [""]


def test_overlong_prompts_are_dropped_and_counted(tmp_path, qwen3_tokenizer):
    from tuneforge.data.conversation import Conversation
    from tuneforge.data.prompts import PromptSample

    samples = [PromptSample(Conversation([Message("user", "word " * n)]), "1") for n in (5, 500)]
    lines = []
    data = prompt_dataset(samples, qwen3_tokenizer, DataConfig(datasets=[{"path": "x"}], max_length=64), lines.append)
    assert len(data) == 1 and lines == ["data: dropped 1 prompts longer than data.max_length=64"]


@needs_assets
def test_instruction_makes_the_prompt_evals_math_prompt(qwen3_tokenizer):
    from tuneforge.eval.tasks import MATH_INSTRUCTION

    cfg = grpo_config(GSM8K)
    cfg.method.grpo.instruction = MATH_INSTRUCTION
    data = prepare_prompts(cfg, qwen3_tokenizer, log=lambda *_: None)
    question = json.loads(GSM8K.read_text().splitlines()[0])["question"]
    # eval --suite math asks Message("user", f"{question}\n{MATH_INSTRUCTION}"), thinking on by default.
    expected = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{question}\n{MATH_INSTRUCTION}"}], add_generation_prompt=True, tokenize=False
    )
    assert data[0]["prompt"] == expected
