"""Optional speed-ups: Liger kernels are skipped with a message off-GPU; compile wraps each decoder layer in place."""

from __future__ import annotations

import pytest
import torch
from tiny_training import tiny_lora_model

from tuneforge.model.kernels import apply_kernels, compile_layers


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_liger_kernels_are_skipped_on_cpu_with_a_message():
    said = []
    assert apply_kernels(tiny_lora_model(num_hidden_layers=1), "liger", log=said.append) == "none"
    assert said == ["model.kernels: liger skipped, its Triton kernels need a CUDA GPU"]
    assert apply_kernels(None, "none") == "none"


def test_compile_wraps_each_decoder_layer_and_keeps_the_module_tree():
    model = tiny_lora_model()
    names = [name for name, _ in model.named_parameters()]
    assert compile_layers(model) == 2
    layers = model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert [name for name, _ in model.named_parameters()] == names  # adapters save and load as before
