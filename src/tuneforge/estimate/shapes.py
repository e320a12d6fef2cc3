"""Published model shapes: the config.json keys memory depends on, for estimates without the hub (offline)."""

from __future__ import annotations

from typing import Any


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> dict[str, Any]:
    """The config.json keys of a dense Qwen3 that memory depends on (vocabulary, head size and KV heads are shared)."""
    return {
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": tied,
    }


# The memory-relevant keys of the official Qwen3 config.json files (huggingface.co/Qwen/Qwen3-*/blob/main/config.json),
# used when a hub id cannot be fetched (offline). 0.6B and 8B are checked against ../shared/assets/model-configs; the
# others against verbatim copies of the published files (github.com/citsjtu2020/LLM-Prof sglang/Model_Config.md: 4B,
# 8B, 14B, 32B) and litgpt's transcription (github.com/Lightning-AI/litgpt litgpt/config.py: all six). All six have
# vocab_size 151936, head_dim 128 and max_position_embeddings 40960 (not a memory term); 1.7B's tied embeddings also
# follow from its model card (1.7 B parameters, 1.4 B without embeddings: one 151936 × 2048 matrix).
QWEN3_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, tied=True),
    "Qwen/Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, tied=True),
    "Qwen/Qwen3-4B": _qwen3(2560, 9728, 36, 32, tied=True),
    "Qwen/Qwen3-8B": _qwen3(4096, 12288, 36, 32, tied=False),
    "Qwen/Qwen3-14B": _qwen3(5120, 17408, 40, 40, tied=False),
    "Qwen/Qwen3-32B": _qwen3(5120, 25600, 64, 64, tied=False),
}


# The other published configs the tutorials use, as their config.json keys (huggingface.co/<id>/blob/main/config.json;
# transcribed in litgpt's litgpt/config.py too). Parameters: 30B-A3B 30.53 B (card: 30.5 B, 3.3 B activated),
# 235B-A22B 235.09 B (card: 235 B, 22 B activated); QwQ-32B (Qwen2 architecture: no q/k norms, 152,064 vocabulary;
# its q/k/v biases, 0.01 % of the weights, not counted) 32.76 B, where its card says 32.5 B.
MOE_AND_QWQ_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-30B-A3B": _qwen3(2048, 6144, 48, 32, tied=False)
    | {"num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768},
    "Qwen/Qwen3-235B-A22B": _qwen3(4096, 12288, 94, 64, tied=False)
    | {"num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 1536},
    "Qwen/QwQ-32B": _qwen3(5120, 27648, 64, 40, tied=False) | {"vocab_size": 152064},
}
PUBLISHED_SHAPES = QWEN3_SHAPES | MOE_AND_QWQ_SHAPES
