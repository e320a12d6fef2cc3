"""Answer extraction on the output shapes reasoning models really produce."""

from __future__ import annotations

import pytest

from tuneforge.answers import (
    CORRECT,
    TRUNCATED,
    WRONG,
    extract_choice,
    gsm8k_gold,
    math_equal,
    outcome,
    split_answer,
)
from tuneforge.eval.metrics import bleu4, contains, exact_match, rouge_l


def test_paired_think_block_is_split_off():
    answer = split_answer("<think>\n先算 16-3-4=9，再乘 2。\n</think>\n\n答案是 C")
    assert answer == type(answer)("先算 16-3-4=9，再乘 2。", "答案是 C", False)


def test_unpaired_close_tag_from_a_prefilled_think_splits_at_the_last_one():
    # Qwen3's template may open <think> in the prompt: the output holds only the closing tag (twice here).
    answer = split_answer("I wrote </think> in my notes.\nSo B.</think>\n\nThe answer is (B)")
    assert answer.reasoning == "I wrote </think> in my notes.\nSo B."
    assert answer.answer == "The answer is (B)" and not answer.truncated


def test_parser_split_reasoning_is_kept_and_no_think_means_no_reasoning():
    assert split_answer("The answer is 7.", "Let me add 3 and 4.").reasoning == "Let me add 3 and 4."
    assert split_answer("The answer is 7.") == type(split_answer(""))(None, "The answer is 7.", False)


@pytest.mark.parametrize(
    "content, reasoning",
    [("<think>\nLet me think about 3 + 4 and then", None), ("", "Let me think about 3 + 4 and then")],
)
def test_output_cut_inside_thinking_is_thinking_truncated_never_wrong(content, reasoning):
    answer = split_answer(content, reasoning, finish_reason="length")
    assert answer.truncated and answer.answer == ""
    assert outcome(answer, correct=False) == TRUNCATED
    # The same text that ended by itself (eos) without an answer is simply wrong.
    assert outcome(split_answer(content, reasoning, finish_reason="stop"), correct=False) == WRONG


def test_answer_cut_after_thinking_is_scored():
    answer = split_answer("<think>\nok\n</think>\n\nThe answer is (A", finish_reason="length")
    assert not answer.truncated and extract_choice(answer.answer) == "A"
    assert outcome(answer, correct=True) == CORRECT


@pytest.mark.parametrize(
    "text, letter",
    [
        ("答案是 C", "C"),
        ("经过分析，正确答案为：D。", "D"),
        ("The answer is (B)", "B"),
        ("Answer: A", "A"),
        ("So the final answer is $\\boxed{C}$.", "C"),
        ("\\boxed{\\text{B}}", "B"),
        ("B. 北京鸭", "B"),
        ("A is tempting, but the answer is **D**", "D"),
        ("我选 A", "A"),
        ("I am not sure.", None),
        ("答案是 E", None),
    ],
)
def test_choice_letter_extraction(text, letter):
    assert extract_choice(text) == letter


def test_math_answers_by_math_verify():
    assert gsm8k_gold("Janet sells 9 eggs.\n#### 1,018") == "1018"
    assert math_equal("She makes 9 * 2 = $18, so the answer is 18.", "18") == (True, "18")
    assert math_equal("Thus $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", "\\left( 3, \\frac{\\pi}{2} \\right)")[0]
    assert math_equal("\\boxed{0.5}", "\\frac{1}{2}")[0]
    assert math_equal("\\boxed{3}", "18") == (False, "3")
    assert math_equal("no number here", "18") == (False, None)


def test_text_metrics_segment_chinese_with_jieba():
    assert exact_match("我是小助手。", "我是小助手") == 1.0
    assert contains("你好！我是小助手，很高兴见到你", "小助手") == 1.0
    assert rouge_l("我是马哥教育的助手", "我是马哥教育的助手") == pytest.approx(1.0)
    # Character-level rouge-score would see no tokens at all in Chinese: jieba words overlap partly here.
    assert 0.0 < rouge_l("我是人工智能助手", "我是马哥教育的助手") < 1.0
    assert bleu4("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert bleu4("我是一个助手", "今天天气很好") < 0.1
