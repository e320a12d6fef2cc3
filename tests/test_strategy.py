"""The distributed strategy, decided once from the config and the process count: what each part asks of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import DistributedConfig
from tuneforge.errors import UserError
from tuneforge.strategy import Strategy


def strategy(world_size: int = 1, **dist) -> Strategy:
    return Strategy.of(DistributedConfig(**dist), world_size)


def test_one_ddp_process_trains_in_place_and_everything_else_needs_torchrun():
    assert not strategy().needs_launcher
    assert strategy(2).needs_launcher
    assert strategy(strategy="deepspeed").needs_launcher and strategy(strategy="fsdp").needs_launcher


def test_backend_per_strategy_and_device():
    assert [strategy(2, strategy=name).backend(cuda=False) for name in ("ddp", "deepspeed", "fsdp")] == ["gloo"] * 3
    assert strategy(2).backend(cuda=True) == "nccl"
    assert strategy(2, strategy="fsdp").backend(cuda=True) == "cuda:nccl,cpu:gloo"


def test_fsdp_checkpoints_activations_itself():
    fsdp = strategy(2, strategy="fsdp", fsdp_offload=True)
    assert not fsdp.trainer_checkpointing(True) and strategy(2).trainer_checkpointing(True)
    args = fsdp.training_arguments(gradient_checkpointing=True, cpu_processes=False)
    assert args["fsdp"] is True and args["fsdp_config"]["activation_checkpointing"] is True
    assert args["fsdp_config"]["cpu_offload"] is True and "deepspeed" not in args
    assert fsdp.sharding == "fsdp+offload"


def test_deepspeed_preset_arguments_on_cpu_processes():
    zero3 = strategy(2, strategy="deepspeed", deepspeed="zero3_offload", timeout_minutes=7)
    args = zero3.training_arguments(gradient_checkpointing=False, cpu_processes=True)
    assert Path(args["deepspeed"]).name == "zero3_offload.json" and Path(args["deepspeed"]).is_file()
    assert args["accelerator_config"] == {"use_configured_state": True} and "use_cpu" not in args
    assert args["ddp_timeout"] == 7 * 60 and zero3.sharding == "zero3+offload"
    assert strategy(2).training_arguments(False, cpu_processes=True)["use_cpu"] is True


def test_an_accelerate_config_asking_for_another_strategy_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="the accelerate config asks for fsdp but the tuneforge config says ddp"):
        strategy(2).check()
    strategy(2, strategy="fsdp").check()
