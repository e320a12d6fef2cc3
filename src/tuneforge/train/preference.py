"""Preference objectives (DPO) through TRL's trainers, fed the pairs tuneforge rendered itself.

TRL re-tokenizes prompt and answers with its own logic, which splits Qwen3's thinking template wrongly (TRL #1930,
#5213, #6361); here its dataset preparation is skipped and the collator builds its batches from our token-exact ids
(data/render.py `render_preference`). Everything else (losses, reference handling, metrics) is TRL's.
"""

from __future__ import annotations

from typing import Any

from trl import DPOConfig, DPOTrainer

from tuneforge.config import MethodConfig
from tuneforge.train.trainer import RunTrainerMixin


def arguments_for(method: MethodConfig) -> tuple[type, dict[str, Any]]:
    """The TrainingArguments subclass of the preference objective, and its settings from method.*."""
    return DPOConfig, {
        "beta": method.beta,
        "loss_type": [method.dpo_loss],
        # LoRA: None keeps the adapter-disabled model as reference; full: TRL holds a frozen copy unless precomputed.
        "precompute_ref_log_probs": method.reference == "precomputed",
        "max_length": None,  # data.max_length already dropped longer pairs
    }


class PreferenceTrainer(RunTrainerMixin, DPOTrainer):
    """TRL's DPOTrainer on pre-tokenized pairs, with tuneforge's run totals and whole-or-nothing checkpoints."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # already rendered and tokenized by tuneforge (see the module docstring)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            self.tokens_computed += inputs["input_ids"].numel()
            self.loss_tokens += int(inputs["completion_mask"].sum())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
