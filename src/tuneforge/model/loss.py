"""The memory-lean training loss: cross-entropy that never holds the full [tokens × vocab] logits.

Qwen3's vocabulary has 151,936 entries, so the logits of 4,096 tokens take 2.5 GB in fp32, and the stock
loss keeps them, their log-softmax and their gradient alive at once. Here logits are computed only at
positions that have a label, a chunk of tokens at a time: on a CUDA GPU with Liger-Kernel installed by
its fused linear cross-entropy (Triton), otherwise by the same scheme in PyTorch, which computes each
chunk's gradient while the chunk's logits exist so that backward has nothing to recompute. An output
layer that is more than a plain Linear (peft's LoRA or modules_to_save on lm_head) is run chunk by chunk
under activation checkpointing instead, its logits recomputed in backward. Under DeepSpeed ZeRO-3, whose
head weight is a shard outside its forward, a frozen head is gathered for the fused loss and a trainable one
runs once over the labelled positions (see LeanLoss._partitioned_loss).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuneforge.constants import IGNORE


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk: 256 MB of fp32 logits (441 tokens of Qwen3's vocabulary).

    Small beside the model, yet wide enough that the matmuls stay efficient: on 2 CPU cores, 55-token
    chunks ran 40 % slower than 441-token ones, and larger chunks gained under 5 %.
    """
    return max(1, 2**26 // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden @ weightᵀ + bias against targets, one chunk of rows at a time.

    The loss is the last operation of the step, so each chunk's gradients (softmax − one-hot, through
    the linear layer) are computed in forward and the chunk's logits freed; backward only scales them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.numel(), chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(h, weight, bias).float()
            target_logit = logits.gather(1, t[:, None])
            # A stable softmax in place, one [chunk × vocab] buffer: exp(logits − max) / sum.
            top = logits.amax(-1, keepdim=True)
            exps = logits.sub_(top).exp_()
            norm = exps.sum(-1, keepdim=True)
            total += (norm.log() + top - target_logit).sum()
            if need_h or need_w or need_b:
                dlogits = exps.div_(norm)  # d(loss)/d(logits) = softmax − one-hot
                dlogits[torch.arange(t.numel(), device=t.device), t] -= 1
                if need_h:
                    grad_h[start : start + chunk] = dlogits.to(weight.dtype) @ weight
                if need_w:
                    grad_w.addmm_(dlogits.T, h.float())
                if need_b:
                    grad_b += dlogits.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (
            None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad_total).to(w_dtype),
            None if grad_b is None else (grad_b * grad_total).to(b_dtype),
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Summed cross-entropy of hidden [N, H] @ weight [V, H]ᵀ (+ bias) against targets [N], in chunks of rows."""
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk)


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    """Summed cross-entropy of any output module's head(hidden) against targets, `chunk` rows at a time.

    Each chunk runs under activation checkpointing: its logits are freed after the forward and
    recomputed in backward, so the peak holds one chunk's logits.
    """
    total = hidden[:0].float().sum()  # zero, but part of the graph even when no token has a label
    for start in range(0, targets.numel(), chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, t)
    return total


def _plain_linear(head: torch.nn.Module) -> bool:
    """Whether the loss may use head.weight directly: not a LoRA / modules_to_save wrapper, whose forward adds more."""
    return type(head) is torch.nn.Linear


def _partitioned(head: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 keeps only a shard of the head's weight outside its forward."""
    return hasattr(head.weight, "ds_id")


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM's output layer (lm_head), looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings; use train.loss: standard")
    return head


class LeanLoss:
    """Causal-LM loss from the last hidden states; a Trainer `compute_loss_func` used inside `capture`.

    While `capture(model)` is active, a pre-hook on the output layer keeps its input (the final hidden
    states) and hands the layer an empty slice: the model's forward, and any DDP/FSDP wrapper around it,
    runs unchanged but computes no logits. The call then computes the loss from the kept states (the
    hook has let go by then, so the loss's own calls to the output layer go through).
    """

    def __init__(self) -> None:
        self._hidden: torch.Tensor | None = None
        self._head: torch.nn.Module | None = None
        self.liger_used = False

    @contextmanager
    def capture(self, model: torch.nn.Module) -> Iterator[None]:
        """Route the final hidden states of `model`'s forwards in this block to the loss."""
        head = output_layer(model)
        # prepend: before hooks that wrap the input (ZeRO-3 ties its backward bookkeeping to it), so the
        # states kept are the model's own and the wrapped input is the empty slice.
        handle = head.register_forward_pre_hook(self._keep_hidden, prepend=True)
        self._head = head
        try:
            yield
        finally:
            handle.remove()
            self._hidden = self._head = None

    def _keep_hidden(self, module, args):
        if self._hidden is not None:  # the loss's own chunks, after the model's forward
            return None
        self._hidden = args[0]
        return (args[0][..., :0, :],)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Mean cross-entropy over the label tokens of the whole (accumulated, all-process) batch."""
        if self._hidden is None or self._head is None:
            raise RuntimeError("LeanLoss called outside LeanLoss.capture(model)")
        hidden = self._hidden
        targets = labels[..., 1:]
        keep = targets != IGNORE
        hidden, targets = hidden[..., :-1, :][keep], targets[keep]
        head = self._head
        # ZeRO-3 leaves .weight an empty shard between forwards; ds_shape is its real shape.
        chunk = chunk_tokens(getattr(head.weight, "ds_shape", head.weight.shape)[0])
        if _partitioned(head):
            total = self._partitioned_loss(head, hidden, targets, chunk)
        elif not _plain_linear(head):
            total = chunked_cross_entropy(head, hidden, targets, chunk)
        else:
            total = self._fused_loss(head.weight, head.bias, hidden, targets, chunk)
        # The Trainer passes the label count of the whole accumulated batch over all processes, so
        # accumulation 4 × 1 sums to the same loss as one batch of 4; alone, fall back to this batch's count.
        return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum())

    def _fused_loss(self, weight, bias, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        """Liger's fused kernel on a CUDA GPU where installed, else ours: both finish the gradients in forward."""
        if hidden.is_cuda and importlib.util.find_spec("liger_kernel") is not None:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self.liger_used = True
            return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets, bias)
        return linear_cross_entropy(hidden, weight, bias, targets, chunk)

    def _partitioned_loss(self, head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
        """The loss through a ZeRO-3-partitioned head.

        A frozen plain head (LoRA) is gathered for the fused loss, which is done with the weight when it
        returns; recomputing chunks in backward would find the weight partitioned again. A head that trains
        runs once over the labelled positions, so ZeRO's own hooks gather it and reduce its gradient: the
        standard loss's memory, but only for the labelled positions.
        """
        import deepspeed

        params = list(head.parameters())
        if _plain_linear(head) and not any(p.requires_grad for p in params):
            with deepspeed.zero.GatheredParameters(params):
                return self._fused_loss(head.weight, head.bias, hidden, targets, chunk)
        return _chunk_loss(head, hidden, targets)
