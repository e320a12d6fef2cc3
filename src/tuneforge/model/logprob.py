"""Per-token log-probabilities for TRL's fused LM head on the CPU, with their gradient finished in forward.

TRL 1.16's DPOTrainer, KTOTrainer and GRPOTrainer score answers through `add_fused_lm_head` (trl/trainer/utils.py),
which runs `ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py). Off CUDA that function scores every position
(prompt and padding too), folds each [tokens × vocabulary] tile with a dozen full-tile torch passes for outputs DPO
logs (entropy, mean logit, top-1) and recomputes every tile in backward: on the tiny Qwen3, LoRA DPO trained at 0.22×
SFT's loss tokens/s and GRPO at 0.31× (bench/logprob_speed.py --trl-path; 1.18× and 1.16× with this module). No
library does this on the CPU (Liger's and TRL's kernels are Triton), so
`LogProbFunction` here does what model/loss.py does for SFT: only the labelled positions, a chunk of tokens at a
time, and, where the head is frozen (LoRA, QLoRA), the gradient of each log-probability with respect to its hidden
state computed while the chunk's logits exist — d log p(t) / dh = c · (W[t] − softmax · W), one [tokens × hidden]
row per token — so that backward only scales those rows. Everything else (the outputs' layout, masking, the losses)
stays TRL's. Use it with `cpu_log_probs()` around the calls; remove once TRL's CPU path scores only labelled
positions and skips the recompute (rerun the bench without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch

from tuneforge.model.loss import chunk_tokens


class LogProbFunction(torch.autograd.Function):
    """TRL's `ChunkedLogProbFunction` interface: the CPU fast path where the head is frozen (see `supported`)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0, outputs=()):
        ctx.set_materialize_grads(False)
        scale = logit_scale / temperature
        n, vocab = targets.numel(), weight.shape[0]
        logprobs, log_z, entropy = (torch.empty(n, dtype=torch.float32) for _ in range(3))
        is_top1 = torch.empty(n, dtype=torch.bool)
        need_grad = ctx.needs_input_grad[0]
        jacobian = torch.empty(hidden.shape, dtype=torch.float32) if need_grad else None
        want_entropy = "entropy" in outputs
        chunk = chunk_tokens(vocab)
        for start in range(0, n, chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            z = torch.nn.functional.linear(h, weight, bias).float()
            if scale != 1:
                z.mul_(scale)
            top, argmax = z.max(-1)  # the first maximum, as TRL's top-1 counts it
            is_top1[start : start + chunk] = argmax == t
            target_z = z.gather(1, t[:, None]).squeeze(1)
            e = z.sub_(top[:, None]).exp_()  # in place: one [chunk × vocabulary] buffer
            norm = e.sum(-1)
            lz = top + norm.log()
            log_z[start : start + chunk], logprobs[start : start + chunk] = lz, target_z - lz
            if not (need_grad or want_entropy):
                continue
            p = e.div_(norm[:, None])
            expected_w = (p.to(weight.dtype) @ weight).float()  # Σ_v p_v W_v
            if want_entropy:  # log Z − Σ p·z, with Σ p·z = scale · (h · Σ p W + Σ p b)
                expected_z = torch.linalg.vecdot(h.float(), expected_w) + (p @ bias.float() if bias is not None else 0)
                entropy[start : start + chunk] = lz - scale * expected_z
            if need_grad:
                jacobian[start : start + chunk] = (weight[t].float() - expected_w).mul_(scale)
        mean_logits = None
        if "mean_logits" in outputs:  # the mean over the vocabulary of h · W_v + b_v is h · mean(W) + mean(b)
            mean_logits = torch.nn.functional.linear(hidden, weight.mean(0, keepdim=True)).squeeze(-1).float()
            mean_logits = (mean_logits + (bias.float().mean() if bias is not None else 0)) * scale
        extra = (
            entropy if "entropy" in outputs else None,
            None,  # log_sum_sq_probs: requested by neither trainer (see `supported`)
            mean_logits,
            is_top1 if "is_top1" in outputs else None,
        )
        # TRL's backward, for an entropy gradient (GRPO's entropy bonus), reads exactly these tensors and settings.
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, extra[0] if extra[0] is not None else log_z)
        ctx.jacobian = jacobian
        ctx.trl = SimpleNamespace(
            compute_dtype=hidden.dtype,
            chunk_size=chunk_size,
            kernel_args={"logit_scale": logit_scale, "softcap": 1.0, "inv_t": 1 / temperature, "HAS_SOFTCAP": False},
        )
        ctx.mark_non_differentiable(*(x for x in extra[2:] if x is not None))
        return (logprobs, *extra)

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, *_):
        hidden = ctx.saved_tensors[0]
        grad_hidden = None
        if grad_logprobs is not None:
            grad_hidden = (grad_logprobs.float()[:, None] * ctx.jacobian).to(hidden.dtype)
        if grad_entropy is not None:  # rare (an entropy bonus): TRL's backward, which recomputes the tiles
            from trl.kernels.chunked_logprob import ChunkedLogProbFunction

            trl_ctx = SimpleNamespace(
                saved_tensors=ctx.saved_tensors, needs_input_grad=(True, False, False), **vars(ctx.trl)
            )
            extra = ChunkedLogProbFunction.backward(trl_ctx, None, grad_entropy)[0]
            grad_hidden = extra if grad_hidden is None else grad_hidden + extra
        return grad_hidden, None, None, None, None, None, None, None, None


def supported(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap, outputs) -> bool:
    """Whether `LogProbFunction` computes this call: on the CPU, a frozen head, no soft-capping, TRL's usual outputs,
    no bf16 autocast (its Jacobian rows would be bf16 products, where TRL's backward recomputes the tiles in fp32)."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    usual = softcap is None and "log_sum_sq_probs" not in outputs
    return hidden.device.type == "cpu" and frozen and usual and not torch.is_autocast_enabled("cpu")


class _Dispatch:
    """What `trl.trainer.utils` calls as its `_ChunkedLogProbFunction`: ours where `supported`, else TRL's."""

    def __init__(self, trl_function: type) -> None:
        self.trl_function = trl_function

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0, outputs=()):
        use = LogProbFunction if supported(hidden, weight, bias, softcap, outputs) else self.trl_function
        return use.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)


@contextmanager
def cpu_log_probs() -> Iterator[None]:
    """Within the block, TRL's fused LM head scores only the labelled positions on the CPU, by `LogProbFunction`.

    TRL scores every position off Triton devices only so that Neuron's compiled tile shapes stay fixed (its comment
    in add_fused_lm_head); on the CPU the compact path is the cheaper one.
    """
    import trl.trainer.utils as trl_utils

    saved = function, use_triton = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    trl_utils._ChunkedLogProbFunction = function if isinstance(function, _Dispatch) else _Dispatch(function)
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction, trl_utils._use_triton = saved
