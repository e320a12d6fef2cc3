"""The distributed strategy, decided once: DDP, DeepSpeed ZeRO presets or FSDP, and what each asks of the launcher,
the process group and the TrainingArguments.

`Strategy.of` is the only reader of `distributed.strategy`; the launcher, the process group set-up and the
Trainer's arguments all ask the `Strategy` it returns.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tuneforge.config import DistributedConfig
from tuneforge.errors import UserError

DEEPSPEED_PRESETS = ("zero2", "zero2_offload", "zero3", "zero3_offload")


def require_deepspeed() -> None:
    """Fail with the install command when the deepspeed package is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "distributed.strategy: deepspeed needs the deepspeed package: pip install 'tuneforge[deepspeed]'"
        )


def deepspeed_config(value: str) -> str:
    """The DeepSpeed JSON for `distributed.deepspeed`: a shipped preset, or the user's own file (checked)."""
    if value in DEEPSPEED_PRESETS:
        return str(resources.files("tuneforge.train").joinpath("deepspeed", f"{value}.json"))
    path = Path(value)
    if not path.is_file():
        raise UserError(
            f"distributed.deepspeed: '{value}' is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a JSON file"
        )
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    return str(path)


@dataclass(frozen=True)
class Strategy:
    """How the training processes share the work, from the config and the number of processes taking part."""

    name: Literal["ddp", "deepspeed", "fsdp"]
    world_size: int
    deepspeed: str  # preset or JSON file (used when name is deepspeed)
    fsdp_offload: bool
    timeout_minutes: int

    @classmethod
    def of(cls, dist: DistributedConfig, world_size: int) -> Strategy:
        """The strategy `dist` asks for, on `world_size` processes."""
        return cls(dist.strategy, world_size, dist.deepspeed, dist.fsdp_offload, dist.timeout_minutes)

    def check(self) -> None:
        """The strategy's package is installed, its DeepSpeed file exists, and no accelerate config contradicts it."""
        if self.name == "deepspeed":
            require_deepspeed()
            deepspeed_config(self.deepspeed)
        # `accelerate launch --config_file` may ask for DeepSpeed or FSDP itself; tuneforge takes the strategy
        # from its own config, so a different one there would silently be ignored.
        for variable, wanted in (("ACCELERATE_USE_DEEPSPEED", "deepspeed"), ("ACCELERATE_USE_FSDP", "fsdp")):
            if os.environ.get(variable, "false").lower() == "true" and self.name != wanted:
                raise UserError(
                    f"distributed.strategy: the accelerate config asks for {wanted} but the tuneforge "
                    f"config says {self.name}; set distributed.strategy={wanted} or drop it from the "
                    "accelerate config"
                )

    @property
    def needs_launcher(self) -> bool:
        """Whether training needs torchrun: several processes, or DeepSpeed / FSDP (a process group even on one)."""
        return self.world_size > 1 or self.name != "ddp"

    def backend(self, cuda: bool) -> str:
        """The process group's backend: gloo on CPU, NCCL on GPUs (with gloo beside it for FSDP)."""
        if not cuda:
            return "gloo"
        # FSDP gathers its full state dict through CPU tensors; accelerate makes the same choice.
        return "cuda:nccl,cpu:gloo" if self.name == "fsdp" else "nccl"

    @property
    def sharding(self) -> str:
        """none, zero2, zero3 or fsdp, with '+offload' where state moves to CPU memory (a DeepSpeed file: zero3)."""
        if self.name == "fsdp":
            return "fsdp+offload" if self.fsdp_offload else "fsdp"
        if self.name == "deepspeed":
            preset = self.deepspeed if self.deepspeed.startswith("zero") else "zero3"
            return preset.replace("_offload", "+offload")
        return "none"

    def trainer_checkpointing(self, gradient_checkpointing: bool) -> bool:
        """Whether the Trainer checkpoints activations itself: under FSDP, FSDP does it (see training_arguments)."""
        return gradient_checkpointing and self.name != "fsdp"

    def training_arguments(self, gradient_checkpointing: bool, cpu_processes: bool) -> dict[str, Any]:
        """TrainingArguments keywords for this strategy (harmless on one process).

        `cpu_processes`: processes a launcher started on a machine without GPUs (tests, debugging), which
        accelerate must be told about.
        """
        # Every trainable parameter (LoRA or full) takes part in each forward pass; searching for unused ones
        # costs a graph traversal per step and breaks gradient checkpointing under DDP.
        arguments: dict[str, Any] = {"ddp_timeout": self.timeout_minutes * 60, "ddp_find_unused_parameters": False}
        if cpu_processes and self.name == "deepspeed":
            arguments["accelerator_config"] = {"use_configured_state": True}  # see distributed.init_processes
        elif cpu_processes:
            arguments["use_cpu"] = True  # without it accelerate sees no GPU and counts one process per rank
        if self.name == "deepspeed":
            # The presets say "auto" for batch sizes, accumulation, clipping and precision: the HF integration
            # fills them from these same TrainingArguments, so the two can never disagree.
            arguments["deepspeed"] = deepspeed_config(self.deepspeed)
        elif self.name == "fsdp":
            arguments["fsdp"] = True
            arguments["fsdp_config"] = {
                "version": 2,
                # Wrap by decoder-layer class: accelerate reads it from the model's `_no_split_modules`.
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "cpu_offload": self.fsdp_offload,
                # One gathered state dict on rank 0, so the adapter or model saves as ordinary files.
                "state_dict_type": "FULL_STATE_DICT",
                # FSDP's own activation checkpointing avoids the extra all-gather of the Trainer's (transformers#30404).
                "activation_checkpointing": gradient_checkpointing,
            }
        return arguments
