"""The memory-lean loss: chunked cross-entropy equals the plain one (loss and gradients), never holds all logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_training import assert_grads_close, loss_and_grads, make_trainer, random_samples, tiny_lora_model
from torch.utils._python_dispatch import TorchDispatchMode

from tuneforge.data.collate import PadCollator
from tuneforge.data.render import IGNORE
from tuneforge.model.loss import chunked_cross_entropy, linear_cross_entropy


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation allocates while active (views are free)"""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: only new storage is an allocation.
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


def plain_and_chunked(loss_fn, chunk: int, bias: bool):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 500, bias=bias)
    hidden = torch.randn(64, 16, requires_grad=True)
    targets = torch.randint(0, 500, (64,))
    params = (hidden, *head.parameters())
    expected = F.cross_entropy(head(hidden), targets, reduction="sum")
    want = torch.autograd.grad(expected * 0.5, params)
    with LargestTensor() as meter:
        got = loss_fn(head, hidden, targets, chunk)
        grads = torch.autograd.grad(got * 0.5, params)  # backward scales by its incoming gradient
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    return meter.largest


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_matches_plain_cross_entropy(chunk, bias):
    def loss(head, hidden, targets, chunk):
        return linear_cross_entropy(hidden, head.weight, head.bias, targets, chunk)

    # One chunk of logits at a time (or the [500, 16] weight gradient, if larger), never all 64 rows.
    assert plain_and_chunked(loss, chunk, bias) == max(min(chunk, 64) * 500, 500 * 16)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_checkpointed_chunks_match_plain_cross_entropy(chunk):
    assert plain_and_chunked(chunked_cross_entropy, chunk, bias=True) == max(min(chunk, 64) * 500, 500 * 16)


def test_no_label_tokens_give_a_zero_that_backpropagates():
    head = torch.nn.Linear(4, 10)
    hidden = torch.zeros(0, 4, requires_grad=True)
    no_targets = torch.zeros(0, dtype=torch.long)
    for loss in (
        chunked_cross_entropy(head, hidden, no_targets, 8),
        linear_cross_entropy(hidden, head.weight, head.bias, no_targets, 8),
    ):
        loss.backward()
        assert loss.item() == 0.0


def test_chunked_loss_equals_standard_loss_through_the_trainer(tmp_path):
    batch = PadCollator(0)(random_samples(4, seed=3))
    num_items = int((batch["labels"][..., 1:] != IGNORE).sum())
    standard = make_trainer(tiny_lora_model(), "standard", tmp_path)
    chunked = make_trainer(tiny_lora_model(), "chunked", tmp_path)

    want_loss, want_grads = loss_and_grads(standard, [batch], num_items)
    with LargestTensor() as meter:
        got_loss, got_grads = loss_and_grads(chunked, [batch], num_items)

    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert_grads_close(got_grads, want_grads)
    # Logits exist only for labelled positions (< 441 here, one chunk), never for the whole batch.
    assert meter.largest == num_items * 151936 < batch["input_ids"].numel() * 151936
    # Outside the trainer the model is untouched: full logits again.
    assert chunked.model(input_ids=batch["input_ids"]).logits.shape == (*batch["input_ids"].shape, 151936)
