"""What each `distributed.strategy` adds to the TrainingArguments: DDP, DeepSpeed ZeRO presets, FSDP."""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path
from typing import Any

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


def strategy_arguments(dist: DistributedConfig, gradient_checkpointing: bool, cpu_processes: bool) -> dict[str, Any]:
    """TrainingArguments keywords for the configured strategy (harmless on one process).

    `cpu_processes`: processes a launcher started on a machine without GPUs (tests, debugging), which
    accelerate must be told about.
    """
    # Every trainable parameter (LoRA or full) takes part in each forward pass; searching for unused ones
    # costs a graph traversal per step and breaks gradient checkpointing under DDP.
    arguments: dict[str, Any] = {"ddp_timeout": dist.timeout_minutes * 60, "ddp_find_unused_parameters": False}
    if cpu_processes and dist.strategy == "deepspeed":
        arguments["accelerator_config"] = {"use_configured_state": True}  # see distributed.init_processes
    elif cpu_processes:
        arguments["use_cpu"] = True  # without it accelerate sees no GPU and counts one process per rank
    if dist.strategy == "deepspeed":
        # The presets say "auto" for batch sizes, accumulation, clipping and precision: the HF integration
        # fills them from these same TrainingArguments, so the two can never disagree.
        arguments["deepspeed"] = deepspeed_config(dist.deepspeed)
    elif dist.strategy == "fsdp":
        arguments["fsdp"] = True
        arguments["fsdp_config"] = {
            "version": 2,
            # Wrap by decoder-layer class: accelerate reads it from the model's `_no_split_modules`.
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "cpu_offload": dist.fsdp_offload,
            # One gathered state dict on rank 0, so the adapter or model saves as ordinary files.
            "state_dict_type": "FULL_STATE_DICT",
            # FSDP's own activation checkpointing avoids the extra all-gather of the Trainer's (transformers#30404).
            "activation_checkpointing": gradient_checkpointing,
        }
    return arguments
