"""GRPO rewards on the outputs Qwen3 and the R1 distills really write: thinking or not, truncated, malformed."""

from __future__ import annotations

import pytest

from tuneforge.config_grpo import GRPOSection, RewardConfig
from tuneforge.errors import UserError
from tuneforge.train.rewards import build_rewards, overlong_penalty

# The generation prompts' tails: Qwen3 thinking on, Qwen3 thinking off (empty block closed in the prompt), R1 distill
# (the template opens the think block), as the real templates render them (tests/test_grpo_data.py checks Qwen3's).
QWEN3_ON = "<|im_start|>user\nJanet's ducks lay 16 eggs…<|im_end|>\n<|im_start|>assistant\n"
QWEN3_OFF = QWEN3_ON + "<think>\n\n</think>\n\n"
R1 = "<｜User｜>Janet's ducks lay 16 eggs…<｜Assistant｜><think>\n"

THINKING = "<think>\nShe has 16 - 3 - 4 = 9 eggs left, 9 × 2 = 18 dollars.\n</think>\n\nShe makes \\boxed{18}."
TRUNCATED = "<think>\nShe has 16 - 3 - 4 = 9 eggs left, 9 × 2 = 18 dol"
R1_DONE = "Okay, 16 - 3 - 4 = 9 eggs, so 9 × 2 = 18.\n</think>\n\nThe answer is \\boxed{18}."
R1_TRUNCATED = "Okay, 16 - 3 - 4 = 9 eggs, so 9 × 2 = 18"

GET_WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


def rewards_of(*names: str, **section) -> dict:
    functions, weights = build_rewards(GRPOSection(rewards=[RewardConfig(name=n) for n in names], **section))
    assert weights == [1.0] * len(names)
    return {f.__name__: f for f in functions}


def score(name: str, prompts: list[str], completions: list[str], **columns) -> list:
    reward = rewards_of(name)[name]
    ids = [[0] * len(c.split()) for c in completions]
    return reward(prompts=prompts, completions=completions, completion_ids=ids, **columns)


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        (QWEN3_ON, THINKING, 1.0),
        (QWEN3_OFF, "9 × 2 = 18, so she makes $18.", 1.0),
        (QWEN3_ON, THINKING.replace("boxed{18}", "boxed{17}"), 0.0),
        # Cut inside the thinking: the 18 there is not an answer.
        (QWEN3_ON, TRUNCATED, 0.0),
        (R1, R1_DONE, 1.0),
        (R1, R1_TRUNCATED, 0.0),
        (QWEN3_ON, "<think>\nno idea\n</think>\n\n", 0.0),
    ],
    ids=["qwen3-thinking", "qwen3-no-thinking", "wrong", "truncated", "r1", "r1-truncated", "empty-answer"],
)
def test_accuracy_reads_the_answer_after_the_thinking_as_eval_does(prompt, completion, expected):
    assert score("accuracy", [prompt], [completion], answer=["18"]) == [expected]


def test_accuracy_takes_math_answers_by_equivalence():
    prompts = [QWEN3_OFF] * 3
    completions = ["So $x = \\boxed{\\frac{1}{2}}$.", "The answer is 0.5", "\\boxed{\\frac{2}{3}}"]
    assert score("accuracy", prompts, completions, answer=["\\frac{1}{2}"] * 3) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        (QWEN3_ON, THINKING, 1.0),
        (R1, R1_DONE, 1.0),
        (QWEN3_OFF, "She makes $18.", 1.0),  # the template closed the (empty) block
        (QWEN3_ON, "She makes $18.", 0.0),  # no thinking where it was on
        (QWEN3_ON, TRUNCATED, 0.0),
        (R1, R1_TRUNCATED, 0.0),
        (QWEN3_ON, "<think>\nhm\n</think>\n\n", 0.0),  # nothing after the thinking
        (QWEN3_ON, "<think>\na\n</think>\n\n<think>\nb\n</think>\n\n18", 0.0),  # two blocks
        (QWEN3_ON, "18 </think> 18", 0.0),  # a stray close tag
        (R1, "<think>\nagain\n</think>\n\n18", 0.0),  # R1 opening a second block
    ],
)
def test_format_wants_one_closed_think_block_then_an_answer(prompt, completion, expected):
    assert score("format", [prompt], [completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("<think>\n先算 16-3-4=9，再乘 2。\n</think>\n\n答案是 C", "C", 1.0),
        ("<think>\nB looks wrong.\n</think>\n\nThe answer is (B)", "C", 0.0),
        ("<think>\nok\n</think>\n\n\\boxed{E}", "e", 1.0),
        ("<think>\nA or C, maybe C", "C", 0.0),  # truncated: no answer yet
    ],
)
def test_choice_uses_evals_letter_extractor(completion, gold, expected):
    assert score("choice", [QWEN3_ON], [completion], answer=[gold]) == [expected]


def test_length_is_dapos_soft_overlong_penalty():
    assert [overlong_penalty(n, 16, 4) for n in (1, 12, 13, 14, 16)] == [0.0, 0.0, -0.25, -0.5, -1.0]
    length = rewards_of("length", max_completion_length=16)["length"]  # cache: a quarter of 16 by default
    ids = [[1] * 12, [1] * 14, [1] * 16]
    assert length(prompts=[""] * 3, completions=[""] * 3, completion_ids=ids) == [0.0, -0.5, -1.0]


def tool_call(arguments: str, name: str = "get_weather") -> str:
    return f'<think>\nCall it.\n</think>\n\n<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (tool_call('{"city": "Paris"}'), 1.0),
        (tool_call('{"city": "Paris", "unit": "c"}'), 1.0),
        (tool_call('{"unit": "c"}'), 0.0),  # required city missing
        (tool_call('{"city": "Paris", "unit": "kelvin"}'), 0.0),  # not in the enum
        (tool_call('{"city": "Paris"}', name="get_time"), 0.0),  # no such tool
        (tool_call('{"city": "Paris"'), 0.0),  # malformed JSON
        ("<think>\nNo tool needed.\n</think>\n\nIt is sunny.", 0.0),
        ("<think>\n" + tool_call('{"city": "Paris"}').split("<tool_call>")[1], 0.0),  # only inside the thinking
    ],
)
def test_tool_call_validates_against_the_samples_schema(completion, expected):
    import json

    assert score("tool_call", [QWEN3_ON], [completion], tools=[json.dumps(GET_WEATHER)]) == [expected]


def test_tool_call_skips_samples_without_tools():
    assert score("tool_call", [QWEN3_ON], [tool_call('{"city": "Paris"}')], tools=["[]"]) == [None]


def test_user_function_from_a_local_file(tmp_path):
    file = tmp_path / "my_rewards.py"
    file.write_text("def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n")
    functions, weights = build_rewards(
        GRPOSection(rewards=[RewardConfig(name=f"{file}:brevity", weight=0.5), RewardConfig(name="format")])
    )
    assert [f.__name__ for f in functions] == ["brevity", "format"] and weights == [0.5, 1.0]
    assert functions[0](prompts=["p"], completions=["abc"], completion_ids=[[1]]) == [0.25]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("acuracy", "method.grpo.rewards.0.name: unknown reward 'acuracy'; use one of accuracy, choice"),
        ("missing.py:f", "method.grpo.rewards.0.name: missing.py: file not found"),
    ],
)
def test_a_bad_reward_name_is_one_line_with_its_key(name, message):
    with pytest.raises(UserError) as err:
        build_rewards(GRPOSection(rewards=[RewardConfig(name=name)]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_function_missing_from_the_file_is_named(tmp_path):
    file = tmp_path / "r.py"
    file.write_text("x = 1\n")
    with pytest.raises(UserError, match=r"method.grpo.rewards.0.name: .*r.py has no function 'reward'"):
        build_rewards(GRPOSection(rewards=[RewardConfig(name=f"{file}:reward")]))
