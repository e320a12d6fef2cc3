"""A thin Trainer subclass: it counts the tokens it trains on and plugs in the memory-lean loss."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

from transformers import Trainer

from tuneforge.data.render import IGNORE
from tuneforge.model.loss import LeanLoss


class SFTTrainer(Trainer):
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
        self.tokens_seen = 0  # non-padding tokens, this process, this session
        self.loss_tokens = 0  # tokens with a label (the model predicts them)
        self.tokens_computed = 0  # tokens run through the model, padding included

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

    def token_summary(self, wall_seconds: float) -> dict[str, float]:
        """Token counts summed over processes, and throughput over `wall_seconds`."""
        import torch

        counts = torch.tensor([self.tokens_seen, self.loss_tokens, self.tokens_computed], device=self.args.device)
        tokens, loss_tokens, computed = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        return {
            "tokens_seen": tokens,
            "loss_tokens": loss_tokens,
            "padding_fraction": round(1 - tokens / computed, 4) if computed else 0.0,
            "wall_time_s": round(wall_seconds, 3),
            "tokens_per_s": tokens / wall_seconds if wall_seconds else 0.0,
            "loss_tokens_per_s": loss_tokens / wall_seconds if wall_seconds else 0.0,
        }
