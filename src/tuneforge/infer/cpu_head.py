"""The output embedding on CPU: a batch of rows multiplied by a prepacked copy of the weight (oneDNN).

A decode step multiplies a few rows by the [vocab, hidden] output weight, the largest matrix of a small model. MKL's
sgemm, which `linear` calls, runs that short, very wide product far below the machine's speed. oneDNN's matmul on a
weight reordered once into its blocked layout does it 4-5.6x faster on 2 cores (bench/cpu_head.py, 8 rows: 8.3 ->
1.5 ms on the tests' tiny Qwen3, 115 -> 28 ms at hidden 1024, the 0.6B's shape; docs/performance.md), and on the CPU
measured every row came out bit for bit the same whatever the number of rows beside it. One row stays with `linear`
(BLAS's matrix-vector product reads the weight once, at memory speed; packed, one row was up to 2x slower on one
thread).

torch has no public prepacked linear; `torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise` are the ops
its own compiler (Inductor, torch/_inductor/fx_passes/mkldnn_fusion.py) emits for a frozen linear on CPU in bf16, or
in float32 where MKL is absent (with MKL it packs for MKL's GEMM, 2.6x slower than oneDNN's here for 8 rows). They
can go when torch offers a public equivalent; tests/test_infer_engine.py fails if they are renamed. The packed copy
costs the head's size again in memory, made on the first call with more than one row (a lone chat never makes it).
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import torch

_PACKED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


def pack_cpu_head(model: Any) -> Any:
    """`model`, its float32 CPU output embedding computing batches of rows with a prepacked weight (same shapes)."""
    head = model.get_output_embeddings()
    weight = head.weight
    if (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and getattr(head, "bias", None) is None
        and torch.backends.mkldnn.is_available()
    ):
        # On the instance, so that copies (peft's modules_to_save) and wrappers (a LoRA on the head) keep it.
        head.forward = types.MethodType(_head_forward, head)
    return model


def _head_forward(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`linear(hidden, head.weight)`: one row by BLAS, more by oneDNN on the packed weight."""
    if hidden.numel() == hidden.shape[-1]:
        return torch.nn.functional.linear(hidden, head.weight)
    return torch.ops.mkldnn._linear_pointwise(hidden, _packed(head), None, "none", [], "")


def _packed(head: torch.nn.Module) -> torch.Tensor:
    """The head's weight in oneDNN's layout, made again whenever the weight has changed since."""
    weight = head.weight
    # A weight made under inference_mode has no version counter; only its storage tells a new one apart.
    key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version)
    cached = _PACKED.get(head)
    if cached is None or cached[0] != key:
        cached = _PACKED[head] = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
    return cached[1]
