"""A LoRA adapter for the tiny Qwen3 whose output differs from the base (shared by the inference and serving tests)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_adapter(base_dir: Path, folder: Path, seed: int = 0, rank: int = 4) -> Path:
    """Save a peft LoRA adapter for the model in `base_dir`, its lora_B perturbed with a fixed seed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    # peft starts lora_B at zero (adapter = identity); random values make the adapter change the output.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder
