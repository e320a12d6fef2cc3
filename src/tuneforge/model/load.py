"""Load the tokenizer and the base model: from a local folder, Hugging Face or ModelScope, pretrained or random."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import ModelConfig
from tuneforge.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_model_path(cfg: ModelConfig) -> str:
    """A local folder for `cfg.name_or_path` (downloaded from ModelScope if asked), or the hub id itself."""
    if Path(cfg.name_or_path).is_dir():
        return cfg.name_or_path
    if cfg.hub == "modelscope":
        try:
            from modelscope import snapshot_download
        except ImportError:
            raise UserError(
                "model.hub: modelscope needs the modelscope package: pip install 'tuneforge[modelscope]'"
            ) from None
        try:
            return snapshot_download(cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir)
        except Exception as exc:  # modelscope raises many types; all mean "not fetched"
            raise UserError(_not_found(cfg, exc)) from None
    return cfg.name_or_path


def _not_found(cfg: ModelConfig, exc: BaseException) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hub == "huggingface" else "ModelScope"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"model.name_or_path: '{cfg.name_or_path}' is not a local folder and could not be fetched from "
        f"{cfg.hub} ({endpoint}): {reason[:200]}. Check the id and revision, your network or HF_ENDPOINT, "
        f"or set model.hub: {'modelscope' if cfg.hub == 'huggingface' else 'huggingface'}"
    )


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's own tokenizer (with its chat template); pad is set apart from eos."""
    from transformers import AutoTokenizer

    source = cfg.tokenizer or resolve_model_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise UserError(_not_found(cfg, exc)) from None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad must differ from eos, or masking pads would also hide the end-of-turn token.
        for candidate in ("<|endoftext|>", "<|fim_pad|>"):
            if candidate in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(candidate) != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            raise UserError(f"{source}: the tokenizer has no pad token distinct from eos ({tokenizer.eos_token})")
    if not tokenizer.chat_template:
        raise UserError(f"{source}: the tokenizer has no chat_template; tuneforge renders with the model's own")
    return tokenizer


def pick_dtype(name: str) -> torch.dtype:
    """Map model.dtype to a torch dtype: auto means bf16 on capable GPUs, fp16 on others, fp32 on CPU."""
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def pick_attn(name: str) -> str:
    """The attention implementation to ask transformers for."""
    if name == "auto":
        import importlib.util

        import torch

        usable = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
        return "flash_attention_2" if usable and torch.cuda.get_device_capability()[0] >= 8 else "sdpa"
    return name


def load_model(cfg: ModelConfig, seed: int = 42) -> PreTrainedModel:
    """The base causal LM: pretrained weights, or random weights from config.json (seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(cfg)
    dtype = pick_dtype(cfg.dtype)
    attn = pick_attn(cfg.attn)
    common = dict(revision=cfg.revision, cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code)
    try:
        if cfg.init == "random":
            config = AutoConfig.from_pretrained(path, **common)
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **common)
    except (OSError, ValueError) as exc:
        raise UserError(_not_found(cfg, exc)) from None
    return model
