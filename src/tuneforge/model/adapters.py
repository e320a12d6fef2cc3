"""The training method on top of the base model: LoRA adapters (peft) or full fine-tuning."""

from __future__ import annotations

from tuneforge.config import MethodConfig


def apply_method(model, method: MethodConfig, log=print):
    """Wrap the model for the chosen method and report how many parameters will train."""
    if method.type == "full":
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=method.rank,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_rslora=method.use_rslora,
            use_dora=method.use_dora,
            modules_to_save=method.modules_to_save,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"method {method.type}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
    return model
