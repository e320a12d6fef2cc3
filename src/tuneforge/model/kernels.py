"""Optional speed-ups on the built model: Liger-Kernel's fused layers and torch.compile of each decoder layer."""

from __future__ import annotations

import importlib.util

from tuneforge.errors import UserError

# RMSNorm, RoPE and SwiGLU only: the loss is train.loss's business (model/loss.py uses Liger's fused
# linear cross-entropy itself), and Liger's own loss forward would replace the model's forward.
LIGER_LAYERS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_kernels(model, kernels: str, log=print) -> str:
    """Apply `model.kernels` in place; returns what was applied ("none" where it cannot run)."""
    if kernels == "none":
        return "none"
    import torch

    if not torch.cuda.is_available():
        log("model.kernels: liger skipped, its Triton kernels need a CUDA GPU")
        return "none"
    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError(
            "model.kernels: liger needs Liger-Kernel: pip install 'tuneforge[liger]', or set model.kernels: none"
        )
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(_base(model), LIGER_LAYERS)
    return "liger"


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place; returns how many were compiled.

    Layer by layer rather than the whole model: the module tree, peft's adapters, saving and the loss's
    output-layer hook stay as they are, and identical layers share one compiled graph.
    """
    layers = getattr(_base(model).get_decoder(), "layers", None)
    if layers is None:
        raise UserError(f"train.compile: {type(_base(model)).__name__} has no decoder layers to compile")
    for layer in layers:
        layer.compile()
    return len(layers)
