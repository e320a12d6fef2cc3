"""method.objective: grpo through TRL's GRPOTrainer (GRPO, DAPO, Dr. GRPO losses), in tuneforge's run folder.

The prompts are rendered by tuneforge (data/prompts.py: the chat template's generation prompt, as `chat` sends it);
TRL samples `num_generations` completions per prompt (transformers' generate, or vLLM on a GPU), scores them with
train/rewards.py and computes the loss and metrics (rewards/NAME/mean and std per reward, kl, entropy,
completions/mean_length, completions/clipped_ratio) that land in metrics.jsonl. Every `completions_every` steps the
step's prompts, completions and rewards are appended to RUN/completions.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from trl import GRPOTrainer as _GRPOTrainer

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.train.preference import PreferenceMixin

COMPLETIONS_NAME = "completions.jsonl"


def check_grpo(cfg: Config, world_size: int) -> None:
    """Fail in one line where the batch cannot hold whole prompt groups or the generation backend cannot run here."""
    import torch

    from tuneforge.train.rewards import build_rewards

    build_rewards(cfg.method.grpo)  # a bad reward name or file fails before any work
    g, t = cfg.method.grpo, cfg.train
    completions = t.per_device_batch_size * t.gradient_accumulation * world_size
    if completions % g.num_generations:
        raise UserError(
            f"method.grpo.num_generations: {g.num_generations} must divide the completions of one step, "
            f"train.per_device_batch_size × train.gradient_accumulation × processes = {completions}; change one of them"
        )
    if g.generation != "transformers" and (importlib.util.find_spec("vllm") is None or not torch.cuda.is_available()):
        raise UserError(
            f"method.grpo.generation: {g.generation} needs vLLM on a CUDA GPU (pip install vllm); "
            "use generation: transformers here"
        )
    names = {r.name for r in g.rewards}
    for module, reward in (("math_verify", "accuracy"), ("jsonschema", "tool_call")):
        if reward in names and importlib.util.find_spec(module) is None:
            raise UserError(f"method.grpo.rewards: {reward} needs {module}: pip install 'tuneforge[grpo]'")
    if g.generation == "vllm_server" and not g.vllm_server_url:
        raise UserError("method.grpo.vllm_server_url: generation vllm_server needs the server's URL (trl vllm-serve)")


class GRPOTrainer(PreferenceMixin, _GRPOTrainer):
    """TRL's GRPOTrainer with tuneforge's run totals, checkpoints, the result without TRL's reference adapter
    (PreferenceMixin) and RUN/completions.jsonl."""

    @classmethod
    def build(cls, cfg: Config, pad_token_id: int, log: Any, **common: Any) -> GRPOTrainer:
        """The GRPO trainer on the rendered prompt dataset, with the configured reward functions."""
        from tuneforge.train.rewards import build_rewards

        rewards, _ = build_rewards(cfg.method.grpo)
        common.pop("eval_dataset", None)  # GRPO evaluation would sample again: `tuneforge eval` measures the run
        completions = Path(cfg.output.dir) / COMPLETIONS_NAME
        return cls(reward_funcs=rewards, completions=completions, every=cfg.method.grpo.completions_every, **common)

    def __init__(self, *args: Any, completions: Path, every: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completions_file, self.completions_every, self._written_step = completions, every, 0

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
        """The rendered prompt texts' ids without added special tokens: the chat template wrote them (as the engine
        tokenizes a rendered prompt); TRL's own text path would add a BOS on models that have one."""
        return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            prompt, completion = inputs["prompt_mask"], inputs["completion_mask"]
            self.tokens_seen += int(prompt.sum() + completion.sum())
            self.tokens_computed += inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
            self.loss_tokens += int(completion.sum())
        # PreferenceMixin counts preference batches' columns: GRPO's are counted above.
        return super(PreferenceMixin, self).compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any):
        """Resuming drops the completions logged after the checkpoint (they are sampled again)."""
        if resume_from_checkpoint and self.args.should_save and self.completions_file.is_file():
            from tuneforge.io import atomic_write_text

            step = json.loads(Path(resume_from_checkpoint, "trainer_state.json").read_text())["global_step"]
            lines = self.completions_file.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
            atomic_write_text(self.completions_file, "".join(kept))
            self._written_step = step
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log (averaged metrics), then the latest generation batch into completions.jsonl when due."""
        super().log(logs, start_time)
        step = self.state.global_step
        due = self.completions_every and step - self._written_step >= self.completions_every
        if not (due and self.model.training and self.accelerator.is_main_process and self._logs["prompt"]):
            return
        rewards = self._logs["rewards"]
        with self.completions_file.open("a", encoding="utf-8") as out:
            for i, (prompt, completion) in enumerate(zip(self._logs["prompt"], self._logs["completion"])):
                row = {"step": step, "prompt": prompt, "completion": completion}
                row["rewards"] = {name: values[i] for name, values in rewards.items()}
                row["advantage"] = self._logs["advantages"][i]
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._written_step = step
