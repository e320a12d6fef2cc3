"""Shared fixtures: the real Qwen3 tokenizer and real datasets from ../shared/assets, tiny random Qwen3 models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared/assets, or $TUNEFORGE_ASSETS where they travel elsewhere (same as bench/machine.py).
ASSETS = Path(os.environ.get("TUNEFORGE_ASSETS", ROOT.parent / "shared" / "assets")).absolute()
TOKENIZER_DIR = ASSETS / "qwen3-tokenizer"
DATA_DIR = ASSETS / "data"

needs_assets = pytest.mark.skipif(
    not TOKENIZER_DIR.is_dir(), reason=f"real Qwen3 tokenizer and datasets not found at {ASSETS} (../shared/assets)"
)

# A Qwen3 small enough to train in seconds on 2 CPU cores, with the real 151,936-token vocabulary.
TINY_QWEN3 = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    initializer_range=0.2,  # wider logits than the default 0.02, so a few LoRA steps can move greedy output
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
)
# The same with Qwen3-MoE's mixture of experts in every layer (Qwen3-30B-A3B's layout: 128 experts, 8 per token,
# top-k weights renormalised, which llama.cpp's qwen3moe assumes).
TINY_QWEN3_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)


def make_tiny_qwen3(folder: Path, seed: int = 0, weights: bool = True, moe: bool = False, **overrides) -> Path:
    """Write a tiny Qwen3 or Qwen3-MoE (config, real tokenizer, random weights unless weights=False) into `folder`."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    config_class, model_class = (Qwen3MoeConfig, Qwen3MoeForCausalLM) if moe else (Qwen3Config, Qwen3ForCausalLM)
    config = config_class(**{**TINY_QWEN3, **(TINY_QWEN3_MOE if moe else {}), **overrides})
    folder.mkdir(parents=True, exist_ok=True)
    if weights:
        torch.manual_seed(seed)
        model_class(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


def save_4bit(source: Path, folder: Path, **quant) -> Path:
    """Quantize a checkpoint with transformers + bitsandbytes and save it 4-bit, as published ones are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, **quant)
    AutoModelForCausalLM.from_pretrained(source, quantization_config=config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer (skips where ../shared/assets is absent)."""
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"real Qwen3 tokenizer not found at {TOKENIZER_DIR} (../shared/assets)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny random-weight Qwen3 with the real tokenizer (read-only: copy before writing)."""
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"real Qwen3 tokenizer not found at {TOKENIZER_DIR} (../shared/assets)")
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture
def data_copy(tmp_path):
    """Copy a shared dataset into tmp_path and return its new path."""

    def copy(name: str) -> Path:
        if not (DATA_DIR / name).exists():
            pytest.skip(f"dataset {name} not found in {DATA_DIR} (../shared/assets)")
        return Path(shutil.copy(DATA_DIR / name, tmp_path / name))

    return copy


def loaded_by(imports: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of the `candidates` modules a fresh interpreter has loaded after `import {imports}`."""
    code = f"import json, sys, {imports}; print(json.dumps(sorted(m for m in {candidates!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
