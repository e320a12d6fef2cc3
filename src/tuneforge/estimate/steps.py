"""The exact number of optimizer steps a run takes, computed the way transformers' Trainer computes `max_steps`.

The Trainer's arithmetic (transformers 5, `Trainer.set_initial_training_values`), for N training samples on W
processes with per-device batch b and accumulation g:

- batches per process and epoch: ceil(N / (b·W)), since the sampler batches without dropping the last, partial
  batch and accelerate's `BatchSamplerShard` (even_batches) deals ceil(ceil(N / b) / W) batches to each process;
- optimizer steps per epoch: max(ceil(batches / g), 1): a last, short accumulation group is still a step;
- total: train.max_steps when set, else ceil(epochs · steps per epoch) (fractional epochs round up).

Packing does not enter: tuneforge packs each batch's own samples (data/collate.py), so batches stay batches of
samples. What does enter is the real prepared set: after mixing, max_samples, the validation split and dropped
samples (data/prepare.py), which is why `plan_steps` prepares the data rather than counting records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.config import Config, TrainConfig
from tuneforge.objective import Objective


@dataclass(frozen=True)
class StepPlan:
    """How many samples, batches and optimizer steps a run has."""

    samples: int
    world_size: int
    per_device_batch: int
    accumulation: int
    batches_per_epoch: int  # per process
    steps_per_epoch: int
    total_steps: int
    epochs: float  # epochs the run covers (with train.max_steps, possibly a fraction or more than configured)
    longest: int = 0  # tokens in the longest prepared sample (0: not known)
    tokens: int = 0  # tokens of all prepared samples (0: not known)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all processes."""
        return self.per_device_batch * self.world_size * self.accumulation

    def describe(self) -> str:
        """One line, e.g. '1,000 samples / (batch 2 × 4 GPUs × accumulation 8) → 16 steps per epoch, 48 in total'."""
        return (
            f"{self.samples:,} samples / (batch {self.per_device_batch} × {self.world_size} process(es) × "
            f"accumulation {self.accumulation}) → {self.steps_per_epoch:,} optimizer steps per epoch, "
            f"{self.total_steps:,} in total ({self.epochs:g} epochs)"
        )


def count_steps(samples: int, train: TrainConfig, world_size: int = 1, longest: int = 0, tokens: int = 0) -> StepPlan:
    """Optimizer steps for `samples` training samples on `world_size` processes, as the Trainer will run them."""
    batch, accumulation = train.per_device_batch_size, train.gradient_accumulation
    batches = math.ceil(samples / (batch * world_size))
    per_epoch = max(math.ceil(batches / accumulation), 1)
    if train.max_steps:
        total = train.max_steps
        epochs = total / per_epoch
    else:
        total = math.ceil(train.epochs * per_epoch)
        epochs = train.epochs
    return StepPlan(samples, world_size, batch, accumulation, batches, per_epoch, total, epochs, longest, tokens)


def plan_steps(cfg: Config, log: Callable[..., None] = print) -> StepPlan:
    """Prepare the data exactly as training will (cached) and count the run's optimizer steps."""
    from tuneforge.data.prepare import prepare
    from tuneforge.model.load import load_tokenizer

    objective = Objective.of(cfg.method)
    tokenizer = load_tokenizer(cfg.model)
    if objective.sample == "prompt":  # GRPO (issue 27): prompts, rendered as training renders them
        from tuneforge.data.prompts import prepare_prompts

        return steps_of(cfg, prepare_prompts(cfg, tokenizer, log))
    return steps_of(cfg, prepare(cfg.data, tokenizer, log, objective=objective).train)


def steps_of(cfg: Config, train: Any) -> StepPlan:
    """The run's optimizer steps over `train`, its prepared training set; `longest` is its widest row, `tokens` all."""
    from tuneforge.data.prepare import widest_rows

    world = cfg.distributed.nproc * cfg.distributed.nnodes
    objective = Objective.of(cfg.method)
    if objective.sample == "prompt":  # GRPO (issue 27): a sample is one completion, num_generations per prompt
        g = cfg.method.grpo
        lengths = train["length"]
        longest = max(lengths) + g.max_completion_length
        return count_steps(len(train) * g.num_generations, cfg.train, world, longest, sum(lengths))
    widths = widest_rows(train, objective)
    return count_steps(len(train), cfg.train, world, max(widths), sum(widths))
