"""A thin Trainer subclass: it only counts the tokens it trains on (for tokens/s and the summary)."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from tuneforge.data.render import IGNORE


class SFTTrainer(Trainer):
    """transformers.Trainer plus token accounting; everything else is the stock training loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0  # non-padding tokens, this process, this session
        self.loss_tokens = 0  # tokens with a label (the model predicts them)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            mask = inputs.get("attention_mask")
            self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self.loss_tokens += int((inputs["labels"][..., 1:] != IGNORE).sum())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def token_summary(self, wall_seconds: float) -> dict[str, float]:
        """Token counts summed over processes, and throughput over `wall_seconds`."""
        import torch

        counts = torch.tensor([self.tokens_seen, self.loss_tokens], device=self.args.device)
        tokens, loss_tokens = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        return {
            "tokens_seen": tokens,
            "loss_tokens": loss_tokens,
            "wall_time_s": round(wall_seconds, 3),
            "tokens_per_s": tokens / wall_seconds if wall_seconds else 0.0,
            "loss_tokens_per_s": loss_tokens / wall_seconds if wall_seconds else 0.0,
        }
