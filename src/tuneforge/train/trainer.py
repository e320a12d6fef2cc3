"""A thin Trainer subclass: token accounting, the memory-lean loss, and checkpoints that appear only when complete."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from tuneforge.config import Config
from tuneforge.constants import IGNORE
from tuneforge.io import atomic_write_json, publish_dir
from tuneforge.model.loss import LeanLoss

# Written into every checkpoint: the run's totals up to it, so that a resumed run's summary covers all segments.
TOTALS_NAME = "run_totals.json"


class RunTrainerMixin:
    """What every tuneforge trainer adds to its transformers / TRL Trainer: the whole run's totals (tokens, loss,
    wall time over all sessions) and checkpoints that appear only when complete. Subclasses count tokens."""

    tokens_seen = 0  # non-padding tokens, this process, this session
    loss_tokens = 0  # tokens with a label (the model predicts them)
    tokens_computed = 0  # tokens run through the model, padding included
    lean_loss: LeanLoss | None = None
    _staging: Path | None = None

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any):
        """The stock `train`, carrying the totals of the sessions before `resume_from_checkpoint`."""
        totals = Path(resume_from_checkpoint, TOTALS_NAME) if resume_from_checkpoint else None
        # A checkpoint written before tuneforge kept totals has none: its summary covers this session only.
        self.carried: dict[str, float] = json.loads(totals.read_text()) if totals and totals.is_file() else {}
        self._started = time.perf_counter()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def run_totals(self, loss_sum: float) -> dict[str, float]:
        """The whole run's totals (all processes, all sessions); `loss_sum`: this session's summed step losses.

        Every process must call it (it sums their counts).
        """
        import torch

        counts = torch.tensor([self.tokens_seen, self.loss_tokens, self.tokens_computed], device=self.args.device)
        counts = self.accelerator.reduce(counts, reduction="sum").tolist()
        mine = dict(zip(("tokens_seen", "loss_tokens", "tokens_computed"), counts, strict=True))
        mine |= {"loss_sum": loss_sum, "wall_time_s": time.perf_counter() - self._started}
        return {key: self.carried.get(key, 0) + value for key, value in mine.items()}

    def summary(self) -> dict[str, float]:
        """After `train`: tokens, throughput, mean train loss and wall time over the whole run, all sessions."""
        totals = self.run_totals(self._total_loss_scalar)  # the Trainer's sum of this session's step losses
        tokens, loss_tokens, computed = (int(totals[k]) for k in ("tokens_seen", "loss_tokens", "tokens_computed"))
        wall = totals["wall_time_s"]
        return {
            "tokens_seen": tokens,
            "loss_tokens": loss_tokens,
            "padding_fraction": round(1 - tokens / computed, 4) if computed else 0.0,
            "train_loss": totals["loss_sum"] / max(self.state.global_step, 1),
            "wall_time_s": round(wall, 3),
            "tokens_per_s": tokens / wall if wall else 0.0,
            "loss_tokens_per_s": loss_tokens / wall if wall else 0.0,
        }

    def _get_output_dir(self, trial: Any) -> str:
        # While a checkpoint is saved, the stock code writes it into the staging folder (see _save_checkpoint).
        return str(self._staging) if self._staging else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The stock checkpoint, written under a staging folder and renamed once every process has written its share.

        A kill at any moment leaves either the complete checkpoint-N or a `.checkpoint-N.staging.tmp` folder, which
        the next start removes (Run.clear_interrupted_writes): `resume: auto` never sees a partial checkpoint.
        """
        run_dir = Path(super()._get_output_dir(trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = self._staging = run_dir / f".{final.name}.staging.tmp"
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        # This session's step losses so far: those logged, plus the steps since the last log (averaged over
        # processes, as logging would). Then every process has written its share (DeepSpeed, RNG states).
        pending = self.accelerator.reduce(self._tr_loss.detach().clone(), reduction="mean").item()
        totals = self.run_totals(self._total_loss_scalar + pending)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            atomic_write_json(staging / final.name / TOTALS_NAME, totals)
            publish_dir(staging / final.name, final)
            staging.rmdir()
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()  # no process goes on (or reads checkpoint-N) before it exists


class SFTTrainer(RunTrainerMixin, Trainer):
    """transformers.Trainer plus token accounting and `loss`; everything else is the stock training loop.

    loss="standard" is the model's own loss over full logits; "chunked" is `LeanLoss`. Both are the
    mean over the label tokens of the whole accumulated batch on all processes (the Trainer's
    `num_items_in_batch`), so accumulation, packing and process count do not change the loss.
    """

    def __init__(self, *args: Any, loss: Literal["standard", "chunked"] = "standard", **kwargs: Any) -> None:
        self.lean_loss = LeanLoss() if loss == "chunked" else None
        if self.lean_loss is not None:
            kwargs["compute_loss_func"] = self.lean_loss
        super().__init__(*args, **kwargs)

    @classmethod
    def build(cls, cfg: Config, pad_token_id: int, log: Callable[..., None], **common: Any) -> SFTTrainer:
        """The trainer with data.packing's collator and train.loss (`common`: the Trainer's keywords, model too)."""
        from tuneforge.data.collate import make_collator

        collator = make_collator(cfg.data, pad_token_id, common["model"], log)
        return cls(data_collator=collator, loss=cfg.train.loss, **common)

    def _count_tokens(self, inputs: dict[str, Any], seq_lens: Any | None) -> None:
        mask = inputs.get("attention_mask")
        if seq_lens is not None:  # packed rows: their padding, if any, is not a sample
            self.tokens_seen += int(seq_lens.sum())
        else:
            self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self.tokens_computed += inputs["input_ids"].numel()
        self.loss_tokens += int((inputs["labels"][..., 1:] != IGNORE).sum())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        seq_lens = inputs.pop("seq_lens", None)
        if model.training:
            self._count_tokens(inputs, seq_lens)
        # A KV cache makes transformers skip the block-diagonal mask it derives from packed position_ids.
        inputs["use_cache"] = False
        lean = self.lean_loss.capture(self.accelerator.unwrap_model(model)) if self.lean_loss else nullcontext()
        with lean:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
