"""The `method.grpo` section: GRPO's sampling, loss and rewards (read by train/grpo.py and train/rewards.py).

A section of its own (not more keys beside DPO's) so that the objective's keys stay together; config.py holds it as
`MethodConfig.grpo`. It imports nothing of tuneforge: config.py imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The rewards tuneforge ships (train/rewards.py); anything else must be FILE.py:FUNCTION.
BUILTIN_REWARDS = ("accuracy", "choice", "format", "length", "tool_call")
# The rewards that compare with the sample's reference answer (data/prompts.py then requires one).
NEEDS_ANSWER = ("accuracy", "choice")


class _Strict(BaseModel):
    # As config.Section (which cannot be imported here without a cycle): unknown keys are errors.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RewardConfig(_Strict):
    name: str = Field(
        description="accuracy (math-verify against the reference answer, as `tuneforge eval --suite math`), choice "
        "(the MCQ letter, eval's extractor), format (a closed think block then a non-empty answer), length (DAPO's "
        "soft over-long penalty), tool_call (a JSON call valid against the sample's tool schema), or FILE.py:FUNCTION "
        "(your own function, called as TRL calls reward functions; this runs your code)."
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum each completion is ranked by.")
    cache: int | None = Field(
        None,
        ge=1,
        description="length: the soft zone in tokens before max_completion_length where the penalty grows from 0 to "
        "-1 (DAPO's L_cache; default: a quarter of max_completion_length).",
    )


def own_rewards(section: GRPOSection) -> list[tuple[str, str]]:
    """(key, name) of each reward that is the user's own FILE.py:FUNCTION (it runs that file's code)."""
    return [
        (f"method.grpo.rewards.{i}.name", r.name)
        for i, r in enumerate(section.rewards)
        if r.name not in BUILTIN_REWARDS
    ]


class GRPOSection(_Strict):
    loss: Literal["grpo", "dapo", "dr_grpo"] = Field(
        "dapo",
        description="TRL's loss_type: grpo (each completion's mean token loss), dapo (mean over all tokens of the "
        "batch; TRL's default), dr_grpo (sum over tokens / max_completion_length; pair with scale_rewards: none).",
    )
    num_generations: int = Field(
        8, ge=2, description="Completions sampled per prompt; the global batch must be a multiple of it."
    )
    max_completion_length: int = Field(256, ge=1, description="Longest completion in tokens (longer ones are cut).")
    beta: float = Field(
        0.0, ge=0, description="KL pull towards the reference model; 0: no reference model (less memory, faster)."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the std of the group, of the batch, or not (Dr. GRPO: none)."
    )
    mask_truncated: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO's overlong filter)."
    )
    generation: Literal["transformers", "vllm", "vllm_server"] = Field(
        "transformers",
        description="Who samples: transformers' generate (CPU and GPU); vllm: colocated on the training GPUs; "
        "vllm_server: a `trl vllm-serve` server at vllm_server_url (pip install vllm; CUDA only).",
    )
    vllm_server_url: str | None = Field(None, description="vllm_server: the server's base URL.")
    instruction: str | None = Field(
        None,
        description="Appended to each prompt's last user turn on a new line, e.g. the math instruction `tuneforge "
        "eval --suite math` adds: Please reason step by step, and put your final answer within \\boxed{}.",
    )
    rewards: list[RewardConfig] = Field(
        default_factory=lambda: [RewardConfig(name="accuracy")],
        min_length=1,
        description="Reward functions, each with a weight; each is logged apart in metrics.jsonl.",
    )
    completions_every: int = Field(
        10,
        ge=0,
        description="Every N steps, append that step's prompts, completions and rewards to "
        "RUN/completions.jsonl (0: never).",
    )
