"""Batches: padded rows (pad ≠ eos, labels masked on padding), or packed rows where each sample sees only itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.packing import best_fit_decreasing
from tuneforge.data.render import IGNORE

# Attention kernels that keep packed samples apart: flash-attn runs varlen over cu_seq_lens; sdpa and eager
# get a block-diagonal causal mask that transformers derives from position_ids when no attention_mask and
# no KV cache are passed (transformers.masking_utils.find_packed_sequence_indices).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
PACKABLE_ATTENTION = ("sdpa", "eager", *VARLEN_ATTENTION)


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


@dataclass
class PackCollator:
    """Packs the batch's samples into rows with per-sample position_ids and no attention_mask.

    The batch keeps its samples (same steps, same loss as padding; no sample is cut): with `varlen`
    (flash-attn) they form one row with no padding at all and cu_seq_lens for the varlen kernel.
    Otherwise they go best-fit decreasing into rows as wide as the batch's longest sample, padded, the
    padding a segment of its own: sdpa and eager attend over whole rows (masked), so a wider row would
    cost more attention compute and memory than padding saves. `seq_lens` lists the real samples'
    lengths (the trainer counts tokens from it and drops it before the forward).
    """

    pad_token_id: int
    varlen: bool = False

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(s["input_ids"]) for s in samples]
        rows = [list(range(len(samples)))] if self.varlen else best_fit_decreasing(lengths, max(lengths))
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        seq_lens = []
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                ids[r, at : at + n] = torch.as_tensor(samples[i]["input_ids"])
                labels[r, at : at + n] = torch.as_tensor(samples[i]["labels"])
                # The previous sample's last token must not learn to predict this sample's first one.
                labels[r, at] = IGNORE
                positions[r, at : at + n] = torch.arange(n)
                at += n
                seq_lens.append(n)
            positions[r, at:] = torch.arange(width - at)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": torch.tensor(seq_lens)}
        if self.varlen:
            cu = torch.tensor([0, *seq_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch |= {
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": max(seq_lens),
                "max_length_k": max(seq_lens),
            }
        return batch


@dataclass
class PreferenceCollator:
    """Preference rows for TRL's trainers: the chosen rows, then the rejected ones (DPOTrainer's layout), right-padded.

    `completion_mask` marks each answer's trained tokens (through the end-of-turn marker), as rendered; precomputed
    reference log-probs pass through.
    """

    pad_token_id: int

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [
            (s["prompt_ids"] + s[f"{side}_ids"], len(s["prompt_ids"]), s[f"{side}_trained"])
            for side in ("chosen", "rejected")
            for s in samples
        ]
        longest = max(len(ids) for ids, _, _ in rows)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        completion = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (row, prompt, trained) in enumerate(rows):
            ids[r, : len(row)] = torch.as_tensor(row)
            mask[r, : len(row)] = 1
            completion[r, prompt : prompt + trained] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": completion}
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in samples[0]:
                batch[key] = torch.tensor([s[key] for s in samples])
        return batch


@dataclass
class PairCollator:
    """Preference pairs for TRL's ORPO and CPO trainers: `PreferenceCollator`'s rows, and the same rows split as those
    trainers read them: chosen_* and rejected_* (input_ids, attention_mask, labels: IGNORE outside the trained tokens).

    The stacked rows stay in the batch for the token counts (the Trainer's and tuneforge's); the trainers read only
    the split ones.
    """

    pad_token_id: int

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = PreferenceCollator(self.pad_token_id)(samples)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
        for side, rows in (("chosen", slice(0, len(samples))), ("rejected", slice(len(samples), None))):
            batch[f"{side}_input_ids"] = batch["input_ids"][rows]
            batch[f"{side}_attention_mask"] = batch["attention_mask"][rows]
            batch[f"{side}_labels"] = labels[rows]
        return batch


def make_collator(cfg: DataConfig, pad_token_id: int, model, log=print) -> PadCollator | PackCollator:
    """The collator for `data.packing` and the model's attention kernel (packing only where samples stay apart)."""
    if not cfg.packing:
        return PadCollator(pad_token_id)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attn = getattr(base.config, "_attn_implementation", None)
    # Remote modelling code may build its own masks and ignore position_ids, letting samples see each other.
    if attn not in PACKABLE_ATTENTION or not type(base).__module__.startswith("transformers."):
        log(
            f"data.packing: padding instead, {type(base).__name__} with attention {attn!r} cannot keep packed "
            "samples apart"
        )
        return PadCollator(pad_token_id)
    return PackCollator(pad_token_id, varlen=attn in VARLEN_ATTENTION)
