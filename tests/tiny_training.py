"""Helpers for the loss and packing tests: a tiny LoRA Qwen3 in memory, a trainer, and gradients of a loss."""

from __future__ import annotations

import torch
from conftest import TINY_QWEN3

from tuneforge.config import MethodConfig
from tuneforge.data.render import IGNORE


def tiny_lora_model(attn: str = "sdpa", seed: int = 0, **overrides):
    """A tiny fp32 Qwen3 (real vocabulary size) with LoRA on all linear layers, built in memory."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tuneforge.model.adapters import apply_method

    config = Qwen3Config(**{**TINY_QWEN3, **overrides})
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = apply_method(Qwen3ForCausalLM(config), MethodConfig(rank=4, alpha=8, dropout=0.0), log=lambda *_: None)
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def make_trainer(model, loss: str, tmp_path):
    from transformers import TrainingArguments

    from tuneforge.train.trainer import SFTTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    return SFTTrainer(model=model, args=args, loss=loss)


def loss_and_grads(trainer, batches, num_items):
    """Loss and LoRA gradients summed over `batches`, each normalised by the whole set's label count."""
    model = trainer.model
    model.zero_grad()
    model.train()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, batch, num_items_in_batch=num_items)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return total, grads


def random_samples(n: int, seed: int = 1) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        length = int(torch.randint(8, 40, (1,), generator=gen))
        ids = torch.randint(0, 151_000, (length,), generator=gen).tolist()
        prompt = int(torch.randint(1, length - 2, (1,), generator=gen))
        samples.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return samples


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    """Every gradient matches to `rel` relative to its norm (elementwise ratios blow up near zero)."""
    assert got.keys() == want.keys() and len(want) > 0
    for name, grad in want.items():
        assert grad.norm() > 0, name
        assert (got[name] - grad).norm() <= rel * grad.norm(), name
