"""Preference objectives (DPO, ORPO, SimPO, KTO) through TRL's trainers, fed the pairs tuneforge rendered itself.

TRL re-tokenizes prompt and answers with its own logic, which splits Qwen3's thinking template wrongly (TRL #1930,
#5213, #6361); here each trainer's dataset preparation is skipped and the batches are built from our token-exact ids
(data/render.py `render_preference`). Everything else (losses, reference handling, metrics) is TRL's:

| objective | TRL trainer (1.16) | reference |
|---|---|---|
| dpo, kto | `DPOTrainer`, `KTOTrainer` | LoRA: a frozen copy of the adapter as training began; full: a model copy |
| orpo | `trl.experimental.orpo.ORPOTrainer` | none |
| simpo | `trl.experimental.cpo.CPOTrainer`, loss_type simpo, cpo_alpha 0 (TRL's SimPO recipe) | none |

dpo and kto can instead precompute the reference log-probs once (method.reference: precomputed). Which trainer, and its
TrainingArguments, objective.py's entry for the objective names; each trainer here brings its collator.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import trl.trainer.utils as trl_utils
from trl import DPOTrainer as _DPOTrainer
from trl import KTOTrainer as _KTOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from tuneforge.config import Config
from tuneforge.constants import IGNORE
from tuneforge.data.collate import PairCollator, PreferenceCollator
from tuneforge.model.logprob import cpu_log_probs
from tuneforge.objective import trl_experimental
from tuneforge.quiet import no_datasets_bars
from tuneforge.train.trainer import RunTrainerMixin

(_CPOTrainer,) = trl_experimental("cpo", "CPOTrainer")
(_ORPOTrainer,) = trl_experimental("orpo", "ORPOTrainer")


# TRL 1.16's fused LM head (DPO, KTO) folds [4,096 tokens × 32,768 vocabulary] fp32 tiles with torch ops where its
# Triton kernel cannot run (CPU), several tile-sized temporaries alive at once: LoRA DPO peaked at 3.6× LoRA SFT's
# memory at 4 rows × 512 tokens on the tiny Qwen3 (bench/preference_memory.py), 0.56× with 4,096-wide tiles, which give
# the same log-probs. Remove once TRL sizes its CPU tiles itself (rerun the bench without it).
CPU_VOCAB_TILE = 4096


class PreferenceMixin(RunTrainerMixin):
    """Token accounting on the stacked rows every preference batch carries (input_ids, attention_mask, and
    completion_mask: each answer's trained tokens); TRL's fused LM head through model/logprob.py on the CPU."""

    collator_class: ClassVar[Callable[[int], Any]]  # the layout of its batches, made from the pad token id

    @classmethod
    def build(cls, cfg: Config, pad_token_id: int, log: Callable[..., None], **common: Any) -> Any:
        """The trainer with its collator on tuneforge's rendered preference data (`common`: the Trainer's keywords)."""
        if not torch.cuda.is_available():
            trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = CPU_VOCAB_TILE  # see CPU_VOCAB_TILE
        # cpu_log_probs: DPO and KTO may precompute the reference log-probs while they are built.
        with no_datasets_bars(), cpu_log_probs():  # the trainers map our columns into theirs: nothing worth a bar
            return cls(data_collator=cls.collator_class(pad_token_id), **common)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The stock step (GRPO's generation, the loss, backward) with model/logprob.py's log-probs on the CPU."""
        with cpu_log_probs():
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The stock evaluation step, with model/logprob.py's log-probs on the CPU."""
        with cpu_log_probs():
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            self.tokens_computed += inputs["input_ids"].numel()
            self.loss_tokens += int(inputs["completion_mask"].sum())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The stock save; the result (not a checkpoint) without TRL's reference adapter."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.args.should_save:
            # Given a LoRA model, TRL adds the reference as a frozen adapter "ref" (the adapter as training began:
            # the base model's behaviour for a new adapter, the continued one for method.adapter), which peft saves
            # in ref/. Checkpoints keep it for resuming; the run's adapter is the trained one alone.
            shutil.rmtree(Path(output_dir or self.args.output_dir) / "ref", ignore_errors=True)


class DPOTrainer(PreferenceMixin, _DPOTrainer):
    """TRL's DPOTrainer on pre-tokenized pairs (data/collate.py PreferenceCollator)."""

    collator_class = PreferenceCollator

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # already rendered and tokenized by tuneforge (see the module docstring)


class KTOTrainer(PreferenceMixin, _KTOTrainer):
    """TRL's KTOTrainer on pre-tokenized labelled answers, with TRL's own collator for unpaired rows."""

    collator_class = DataCollatorForUnpairedPreference

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        """Our rendered samples as KTOTrainer's columns: prompt_ids, completion_ids, label, KL_completion_ids."""
        batch_size = args.per_device_train_batch_size

        def unpaired(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {"completion_ids": [], "label": []}
            for chosen, rejected, n_chosen, n_rejected in zip(
                batch["chosen_ids"], batch["rejected_ids"], batch["chosen_trained"], batch["rejected_trained"]
            ):
                desirable = bool(chosen)
                # The scored tokens only: what follows the end-of-turn marker is the template's, not the answer's.
                out["completion_ids"].append(chosen[:n_chosen] if desirable else rejected[:n_rejected])
                out["label"].append(desirable)
            # TRL's KL estimate: each prompt with the previous sample's answer in its batch (KTO paper, section 4.1).
            completions = out["completion_ids"]
            out["KL_completion_ids"] = [completions[-1], *completions[:-1]] if self.calculate_KL else []
            return out

        drop = ["chosen_ids", "rejected_ids", "chosen_trained", "rejected_trained"]
        columns = dataset.map(unpaired, batched=True, batch_size=batch_size, remove_columns=drop)
        return columns if self.calculate_KL else columns.remove_columns("KL_completion_ids")


class ORPOTrainer(PreferenceMixin, _ORPOTrainer):
    """TRL's ORPOTrainer on pre-tokenized pairs (data/collate.py PairCollator)."""

    collator_class = PairCollator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # PairCollator's batches have the layout of TRL's own collator: evaluation need not warn at every batch.
        self.use_dpo_data_collator = True

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        return {}  # already rendered and tokenized by tuneforge: the map keeps the columns as they are

    def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> tuple:
        """TRL's forward, with the chosen answers' NLL over their scored tokens only.

        TRL 1.16 takes the ORPO NLL term over prompt and answer; the ORPO paper's L_SFT (eq. 2) is the answer's NLL
        given the prompt, and tuneforge never trains prompt tokens (docs/architecture.md, "How labels are found").
        """
        import torch.nn.functional as F

        out = super().concatenated_forward(model, batch)
        chosen_logits = out[2]  # position t predicts token t + 1
        labels = batch["chosen_labels"][:, 1:].to(chosen_logits.device)
        nll = F.cross_entropy(chosen_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        return (*out[:4], nll, *out[5:])


class SimPOTrainer(PreferenceMixin, _CPOTrainer):
    """TRL's CPOTrainer with loss_type simpo and no NLL term, on pre-tokenized pairs (data/collate.py PairCollator)."""

    collator_class = PairCollator

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        return {}  # already rendered and tokenized by tuneforge: the map keeps the columns as they are
