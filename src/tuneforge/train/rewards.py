"""GRPO reward functions (method.grpo.rewards), called as TRL's GRPOTrainer calls them.

TRL calls each with `prompts`, `completions` (decoded text), `completion_ids` and every other dataset column as a
keyword (here `answer` and `tools`, one value per completion); each returns one float per completion, or None where
it does not apply (TRL then leaves that completion out of the reward's mean). Answers are read as `tuneforge eval`
reads them (answers.py: the split at the last `</think>`, math-verify equivalence, the MCQ letter extractor), so a
reward and the eval of the trained run grade alike.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneforge.answers import extract_choice, math_equal, split_answer
from tuneforge.config_grpo import BUILTIN_REWARDS, GRPOSection, RewardConfig
from tuneforge.constants import THINK_CLOSE, THINK_OPEN
from tuneforge.errors import UserError

CHOICE_LETTERS = "ABCDEFGHIJ"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def assistant_output(prompt: str, completion: str) -> str:
    """The whole assistant output: the completion, after the think-block text the generation prompt already holds.

    R1-style templates open `<think>` in the prompt; Qwen3 with thinking off closes an empty block there. Without
    this, a truncated R1 completion (reasoning, no tags) would read as all answer.
    """
    tail = prompt.rstrip()
    if tail.endswith(THINK_OPEN):
        return f"{THINK_OPEN}\n{completion}"
    if tail.endswith(THINK_CLOSE):
        return tail[tail.rindex(THINK_OPEN) :] + "\n\n" + completion
    return completion


def _answers(prompts: Sequence[str], completions: Sequence[str]) -> list[Any]:
    return [split_answer(assistant_output(p, c)) for p, c in zip(prompts, completions)]


def accuracy(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1 where the answer after the thinking equals the reference by math-verify (as `eval --suite math`), else 0."""
    answers = _answers(prompts, completions)
    return [float(math_equal(a.answer, gold)[0]) if a.answer else 0.0 for a, gold in zip(answers, answer)]


def choice(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1 where the letter eval's MCQ extractor reads from the answer is the reference letter, else 0."""
    return [
        float(extract_choice(a.answer, CHOICE_LETTERS) == gold.strip().upper())
        for a, gold in zip(_answers(prompts, completions), answer)
    ]


def format_(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1 for one closed think block (`<think>…</think>`) followed by a non-empty answer with no think tags, else 0."""
    scores = []
    for prompt, completion in zip(prompts, completions):
        output = assistant_output(prompt, completion).strip()
        well_formed = output.startswith(THINK_OPEN) and output.count(THINK_OPEN) == output.count(THINK_CLOSE) == 1
        scores.append(float(well_formed and bool(split_answer(output).answer)))
    return scores


def overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's soft over-long punishment (eq. 13): 0 up to max_length - cache, then linearly down to -1 at max_length."""
    if length <= max_length - cache:
        return 0.0
    return max(-1.0, (max_length - cache - length) / cache)


def _tool_call_valid(completion: str, tools: list[dict[str, Any]]) -> bool:
    import jsonschema

    calls = _TOOL_CALL.findall(split_answer(completion).answer)
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools if "function" in t}
    for text in calls:
        try:
            call = json.loads(text)
            jsonschema.validate(call.get("arguments", {}), schemas[call["name"]])
        except (json.JSONDecodeError, jsonschema.ValidationError, KeyError, AttributeError, TypeError):
            return False
    return bool(calls)


def tool_call(prompts: Sequence[str], completions: Sequence[str], tools: Sequence[Any], **_: Any) -> list[float | None]:
    """1 where every `<tool_call>` is JSON naming one of the sample's tools with arguments valid against its schema,
    0 where one is not (or none is made); None for samples without tools."""
    out: list[float | None] = []
    for prompt, completion, sample_tools in zip(prompts, completions, tools):
        parsed = json.loads(sample_tools) if isinstance(sample_tools, str) else sample_tools
        out.append(float(_tool_call_valid(assistant_output(prompt, completion), parsed)) if parsed else None)
    return out


def _user_function(spec: str, key: str) -> Callable[..., list[float | None]]:
    """FILE.py:FUNCTION, imported from a local file (this runs the user's code)."""
    file, _, name = spec.rpartition(":")
    path = Path(file).expanduser()
    if not file or not name:
        raise UserError(f"{key}: unknown reward '{spec}'; use one of {', '.join(BUILTIN_REWARDS)} or FILE.py:FUNCTION")
    if not path.is_file():
        raise UserError(f"{key}: {path}: file not found (the reward '{spec}' names FILE.py:FUNCTION)")
    module_spec = importlib.util.spec_from_file_location(f"tuneforge_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{key}: {path} has no function '{name}'")
    return function


class Reward:
    """One configured reward: TRL names it after `__name__` in metrics (rewards/NAME/mean, rewards/NAME/std)."""

    def __init__(self, name: str, function: Callable[..., list[float | None]], **params: Any) -> None:
        self.__name__ = name
        self.function, self.params = function, params

    def __call__(self, **kwargs: Any) -> list[float | None]:
        """The reward of each completion."""
        return self.function(**kwargs, **self.params)


def _length(completion_ids: Sequence[Sequence[int]], max_length: int, cache: int, **_: Any) -> list[float]:
    return [overlong_penalty(len(ids), max_length, cache) for ids in completion_ids]


def build_rewards(grpo: GRPOSection) -> tuple[list[Reward], list[float]]:
    """The reward functions of method.grpo.rewards and their weights; unknown names fail in one line."""
    functions, weights = [], []
    builtins = {"accuracy": accuracy, "choice": choice, "format": format_, "tool_call": tool_call}
    for i, reward in enumerate(grpo.rewards):
        key = f"method.grpo.rewards.{i}.name"
        functions.append(_build(reward, key, grpo.max_completion_length, builtins))
        weights.append(reward.weight)
    names = [f.__name__ for f in functions]
    if len(set(names)) < len(names):
        raise UserError(f"method.grpo.rewards: a reward is listed twice ({', '.join(names)}); list each once")
    return functions, weights


def _build(reward: RewardConfig, key: str, max_length: int, builtins: dict[str, Callable]) -> Reward:
    if reward.cache is not None and reward.name != "length":
        raise UserError(f"{key.removesuffix('.name')}.cache: only the length reward reads it; remove it")
    if reward.name == "length":
        cache = reward.cache or max(1, max_length // 4)
        if cache > max_length:
            raise UserError(f"{key.removesuffix('.name')}.cache: {cache} exceeds max_completion_length {max_length}")
        return Reward("length", _length, max_length=max_length, cache=cache)
    if reward.name in builtins:
        return Reward(reward.name, builtins[reward.name])
    return Reward(reward.name.rpartition(":")[2] or reward.name, _user_function(reward.name, key))
