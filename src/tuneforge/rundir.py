"""The run folder: one place for everything a training run produced, so that later stages need no flags.

Layout (DESIGN.md invariant 5):

    RUN/config.yaml      resolved config
    RUN/base/            the base model, only for `model.init: random` (its weights exist nowhere else)
    RUN/adapter/         LoRA / QLoRA adapter + tokenizer (method lora/qlora)
    RUN/model/           full model + tokenizer (method full)
    RUN/checkpoints/     Trainer checkpoints (checkpoint-N)
    RUN/metrics.jsonl    one JSON object per logging step
    RUN/loss.png         the loss curve
    RUN/summary.json     steps, tokens seen, loss tokens, wall time, tokens/s
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.errors import UserError
from tuneforge.io import remove_stale_temporaries

if TYPE_CHECKING:
    from tuneforge.config import Config, ModelConfig


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run folder."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")
    base = property(lambda self: self.root / "base")
    adapter = property(lambda self: self.root / "adapter")
    model = property(lambda self: self.root / "model")
    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    loss_plot = property(lambda self: self.root / "loss.png")
    summary = property(lambda self: self.root / "summary.json")

    def load_config(self) -> Config:
        """The resolved config the run was trained with."""
        from tuneforge.config import load_config

        if not self.config.is_file():
            raise UserError(f"{self.root}: not a tuneforge run folder (no config.yaml)")
        return load_config(self.config)

    def base_model_config(self) -> ModelConfig:
        """The model section pointing at the base weights: the saved random base, or the configured model."""
        model = self.load_config().model
        if self.base.is_dir():
            return model.model_copy(update={"name_or_path": str(self.base), "init": "pretrained", "tokenizer": None})
        return model

    def clear_interrupted_writes(self) -> list[Path]:
        """Remove what killed writes left here (temporaries, unfinished checkpoints); returns what was cleared."""
        finals = [self.config, self.base, self.adapter, self.model, self.metrics, self.loss_plot, self.summary]
        # A checkpoint is staged as checkpoints/.checkpoint-N.staging.tmp (SFTTrainer._save_checkpoint).
        finals += {self.checkpoints / p.name.split(".")[1] for p in self.checkpoints.glob(".checkpoint-*")}
        return [cleared for final in finals for cleared in remove_stale_temporaries(final)]

    def latest_checkpoint(self) -> Path | None:
        """The newest `checkpoint-N` folder, if any."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)
