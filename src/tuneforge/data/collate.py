"""Batches: samples padded to the longest in the batch (pad ≠ eos, labels masked on padding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.data.render import IGNORE


@dataclass
class PadCollator:
    """Right-pads input_ids with the pad id, labels with IGNORE, and builds the attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[row, :n] = torch.as_tensor(s["input_ids"])
            labels[row, :n] = torch.as_tensor(s["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
