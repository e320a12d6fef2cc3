"""What `method.objective` means, decided once: the samples it trains on, the method keys it reads, what the estimate
counts for it, its reference model, and how training builds its TrainingArguments and Trainer.

`Objective.of` is the only reader of `method.objective`; the config check, the data stage, the estimate, training and
eval ask the `Objective` it returns. An objective is one entry in OBJECTIVES plus its builders: a function giving its
TrainingArguments class and settings (here: it imports only TRL / transformers, lazily), and a Trainer class in
train/ with a `build` classmethod that makes its collator (named by `trainer`: this module sits below data/ and
train/, which import it, so it names that class rather than importing it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# What an objective trains on (data/formats.py says which formats hold each), as the data errors name it.
Sample = Literal["conversation", "pair", "labelled", "prompt"]
SAMPLE_NAMES: dict[str, str] = {
    "conversation": "conversations",
    "pair": "chosen/rejected pairs",
    "labelled": "labelled answers",
    "prompt": "prompts with reference answers",
}


class Method(Protocol):
    """The config's `method` section as `Objective.of` reads it (config.MethodConfig, which imports this module)."""

    objective: str


Arguments = Callable[[Any, int], tuple[type, dict[str, Any]]]


@dataclass(frozen=True)
class Scored:
    """One answer's log-probability over its trained tokens under the model judged and under the reference."""

    logp: float
    ref_logp: float
    tokens: int

    @property
    def mean(self) -> float:
        """The mean log-probability per trained token (what the reference-free objectives compare)."""
        return self.logp / self.tokens


Reward = Callable[[Any, Scored], float]  # (method section, answer) -> TRL's reward of that answer
PairLoss = Callable[[Any, Scored, Scored], float]  # (method section, chosen, rejected) -> the objective's loss


@dataclass(frozen=True)
class Objective:
    """One training objective: the data it takes, the settings it reads, and how its Trainer is built."""

    name: str
    sample: Sample
    keys: tuple[str, ...]  # the method.* keys it reads beyond LoRA / quantization ones
    rows_per_sample: int  # rows the model runs with gradients for each sample (a pair: chosen and rejected)
    loss_buffer: Literal["standard", "chunked"] | None  # the logits buffer its trainer builds; None: train.loss's
    reference: bool  # compares against a reference model (a frozen copy, or log-probs precomputed before training)
    trainer: str  # "module:Class" of its Trainer in train/: `Class.build(cfg, pad_token_id, log, **trainer_keywords)`
    arguments: Arguments  # (method section, data.max_length) -> (TrainingArguments class, its settings)
    needs_trl: bool = False  # trains through TRL (the [preference] extra)
    ordered: str | None = None  # why its batches follow the dataset order (data.group_by_length is then not used)
    min_batch: tuple[int, str] | None = None  # the smallest train.per_device_batch_size, and why
    reward: Reward | None = None  # TRL's reward of an answer (it logs rewards/*: RUN/rewards.png, eval's metrics)
    pair_loss: PairLoss | None = None  # its loss on one pair, as TRL computes it (eval's held-out preference loss)

    @classmethod
    def of(cls, method: Method) -> Objective:
        """The objective `method.objective` names."""
        return OBJECTIVES[method.objective]

    @property
    def packs(self) -> bool:
        """Whether data.packing applies (conversations only: preference rows are padded)."""
        return self.sample == "conversation"

    def ignored_keys(self) -> list[str]:
        """The objective keys other objectives read and this one ignores (beta under sft)."""
        return sorted({k for o in OBJECTIVES.values() for k in o.keys} - set(self.keys))

    def batch_problem(self, per_device_batch_size: int) -> str | None:
        """The train.per_device_batch_size problem, where the objective needs larger batches."""
        if self.min_batch is None or per_device_batch_size >= self.min_batch[0]:
            return None
        least, why = self.min_batch
        return (
            f"train.per_device_batch_size: {self.name} {why}, so it needs at least {least} (got "
            f"{per_device_batch_size}); set train.per_device_batch_size: {least} or more"
        )


def trl_experimental(module: str, *names: str) -> tuple[Any, ...]:
    """Classes from `trl.experimental.<module>`, whose import warns that it may change (constraints.txt pins TRL)."""
    import importlib

    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        found = importlib.import_module(f"trl.experimental.{module}")
    return tuple(getattr(found, name) for name in names)


# --- each objective's TrainingArguments -------------------------------------------------------------------------
# data.max_length already dropped longer pairs: DPO and KTO must not truncate (their collators would); ORPO and CPO
# read max_length only where tuneforge bypasses them (tokenize_row) or does not use them (generation).


def _sft_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    from transformers import TrainingArguments

    return TrainingArguments, {}


def _dpo_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    from trl import DPOConfig

    return DPOConfig, {
        "beta": method.beta,
        "loss_type": [method.dpo_loss],
        "precompute_ref_log_probs": method.reference == "precomputed",
        "max_length": None,
    }


def _kto_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    from trl import KTOConfig

    return KTOConfig, {
        "beta": method.beta,
        "desirable_weight": method.desirable_weight,
        "undesirable_weight": method.undesirable_weight,
        "precompute_ref_log_probs": method.reference == "precomputed",
        "max_length": None,
        # The KL term pairs each prompt with another sample's answer of the same batch; KTOTrainer fixes those pairs
        # in the dataset (train/preference.py KTOTrainer._prepare_dataset), so batches follow the dataset order.
        "train_sampling_strategy": "sequential",
    }


def _orpo_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    (config,) = trl_experimental("orpo", "ORPOConfig")
    return config, {"beta": method.beta, "max_length": max_length}


def _simpo_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    (config,) = trl_experimental("cpo", "CPOConfig")
    return config, {
        "loss_type": "simpo",
        "cpo_alpha": 0.0,  # no NLL term: plain SimPO
        "beta": method.beta,
        "simpo_gamma": method.simpo_gamma,
        "max_length": max_length,
    }


def _grpo_arguments(method: Any, max_length: int) -> tuple[type, dict[str, Any]]:
    """GRPOConfig and its settings from method.grpo (train/run.py's training_arguments adds the shared ones)."""
    from trl import GRPOConfig

    g = method.grpo
    return GRPOConfig, {
        "loss_type": g.loss,
        "num_generations": g.num_generations,
        "max_completion_length": g.max_completion_length,
        "beta": g.beta,
        "temperature": g.temperature,
        "scale_rewards": g.scale_rewards,
        "mask_truncated_completions": g.mask_truncated,
        "reward_weights": [r.weight for r in g.rewards],
        "use_vllm": g.generation != "transformers",
        "vllm_mode": "server" if g.generation == "vllm_server" else "colocate",
        "vllm_server_base_url": g.vllm_server_url,
        "log_completions": False,  # TRL's parquet tables in checkpoints/; ours is RUN/completions.jsonl
        # GRPO batches carry prompt/completion ids, not input_ids: the Trainer cannot count them (train/grpo.py does).
        "include_num_input_tokens_seen": "no",
    }


# --- each objective's reward and loss on one pair, as TRL 1.16 logs them (eval: held-out pairs) ------------------


def log_sigmoid(x: float) -> float:
    """log(sigmoid(x)), without overflow at either end."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _against_reference(method: Any, answer: Scored) -> float:
    return method.beta * (answer.logp - answer.ref_logp)  # DPO, KTO: beta times the log-ratio to the reference


def _mean_logp(method: Any, answer: Scored) -> float:
    return method.beta * answer.mean  # ORPO, SimPO (reference-free): beta times the mean log-prob per token


def _sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def _dpo_loss(method: Any, chosen: Scored, rejected: Scored) -> float:
    b, c, r = method.beta, chosen.logp - chosen.ref_logp, rejected.logp - rejected.ref_logp  # log-ratios
    if method.dpo_loss == "hinge":
        return max(0.0, 1.0 - b * (c - r))
    if method.dpo_loss == "ipo":  # TRL averages the log-ratios per answer token for IPO
        return (c / chosen.tokens - r / rejected.tokens - 1 / (2 * b)) ** 2
    if method.dpo_loss == "apo_zero":
        return 1 - _sigmoid(b * c) + _sigmoid(b * r)
    if method.dpo_loss == "apo_down":
        return _sigmoid(b * c) + 1 - _sigmoid(b * (c - r))
    return -log_sigmoid(b * (c - r))  # sigmoid; robust too (without label smoothing, which tuneforge does not set)


def _simpo_loss(method: Any, chosen: Scored, rejected: Scored) -> float:
    return -log_sigmoid(method.beta * (chosen.mean - rejected.mean) - method.simpo_gamma)


def _orpo_loss(method: Any, chosen: Scored, rejected: Scored) -> float:
    # The chosen answer's NLL per token, minus beta times the log-sigmoid of the log odds ratio (ORPO paper, eq. 6).
    log_odds = (chosen.mean - rejected.mean) - (
        math.log1p(-math.exp(chosen.mean)) - math.log1p(-math.exp(rejected.mean))
    )
    return -chosen.mean - method.beta * log_sigmoid(log_odds)


# The loss buffers follow each TRL trainer (estimate/memory.py's docstring): DPO and KTO fold the LM head in chunks,
# ORPO and CPO build full logits.
_PAIRS = dict(sample="pair", rows_per_sample=2, needs_trl=True)
OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "sft",
            sample="conversation",
            keys=(),
            rows_per_sample=1,
            loss_buffer=None,
            reference=False,
            trainer="tuneforge.train.trainer:SFTTrainer",
            arguments=_sft_arguments,
        ),
        Objective(
            "dpo",
            **_PAIRS,
            keys=("beta", "dpo_loss", "reference"),
            loss_buffer="chunked",
            reference=True,
            trainer="tuneforge.train.preference:DPOTrainer",
            arguments=_dpo_arguments,
            reward=_against_reference,
            pair_loss=_dpo_loss,
        ),
        Objective(
            "orpo",
            **_PAIRS,
            keys=("beta",),
            loss_buffer="standard",
            reference=False,
            trainer="tuneforge.train.preference:ORPOTrainer",
            arguments=_orpo_arguments,
            reward=_mean_logp,
            pair_loss=_orpo_loss,
        ),
        Objective(
            "simpo",
            **_PAIRS,
            keys=("beta", "simpo_gamma"),
            loss_buffer="standard",
            reference=False,
            trainer="tuneforge.train.preference:SimPOTrainer",
            arguments=_simpo_arguments,
            reward=_mean_logp,
            pair_loss=_simpo_loss,
        ),
        Objective(
            "kto",
            sample="labelled",
            keys=("beta", "reference", "desirable_weight", "undesirable_weight"),
            rows_per_sample=1,
            loss_buffer="chunked",
            reference=True,
            trainer="tuneforge.train.preference:KTOTrainer",
            arguments=_kto_arguments,
            needs_trl=True,
            ordered="its KL term pairs neighbours in dataset order",
            min_batch=(2, "estimates its KL term from the other answers of a batch"),
            reward=_against_reference,  # no pairs: eval reports its rewards, not a pair loss
        ),
        Objective(  # GRPO (issue 27): prompts; TRL samples num_generations answers each and scores them
            "grpo",
            sample="prompt",
            keys=("grpo",),
            rows_per_sample=1,  # a row is one completion (estimate/memory.py widens it by the completion length)
            loss_buffer="standard",
            reference=False,  # method.grpo.beta > 0 adds one: estimate/grpo.py counts it
            trainer="tuneforge.train.grpo:GRPOTrainer",
            arguments=_grpo_arguments,
            needs_trl=True,
        ),
    )
}
# config.py's choices for method.objective.
ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]
SFT = OBJECTIVES["sft"]


def trained_on(sample: Sample) -> str:
    """A kind of sample with the objectives that train on it: 'chosen/rejected pairs (dpo, orpo, simpo)'."""
    return f"{SAMPLE_NAMES[sample]} ({', '.join(o.name for o in OBJECTIVES.values() if o.sample == sample)})"
