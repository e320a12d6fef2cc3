"""GRPO's memory terms (method.objective grpo, train/grpo.py), added to the estimate by estimate/memory.py.

A GRPO step has two phases that do not overlap: sampling, where transformers' generate holds a KV cache for every
completion of the generation batch (per_device_batch_size × gradient_accumulation rows per process, prompt plus
max_completion_length tokens each) and the next-token logits; and the loss, where TRL runs each micro-batch of
per_device_batch_size completions with gradients (the activations of rows of prompt + completion tokens, counted by
memory.py from `Job.max_length`) and takes the logits of the completion tokens only (`logits_to_keep`), in fp32
after its temperature division, then their log-softmax. The reference (beta > 0) is TRL's frozen copy of the adapter
for LoRA and a second copy of the weights for full fine-tuning; beta 0 has none. vLLM generation holds its own pool
(TRL's vllm_gpu_memory_utilization, 0.3 of the GPU), not counted here.
"""

from __future__ import annotations

from typing import Any, Protocol

FP32 = 4


class Job(Protocol):
    """What these terms read of estimate/memory.py's Job (named here so memory.py can import this module alone)."""

    shape: Any
    dtype_bytes: int
    method: Any
    train: Any
    max_length: int


def grpo_parts(job: Job, lora: float, weights: float) -> dict[str, float]:
    """The GRPO-specific parts: sampling (KV cache + logits), the completion-only loss buffer, the reference."""
    s, b, g, t = job.shape, job.dtype_bytes, job.method.grpo, job.train
    rows = t.per_device_batch_size * t.gradient_accumulation  # one generation batch per process
    width = job.max_length  # prompt + max_completion_length (memory.Job.from_config)
    kv_cache = rows * width * s.layers * 2 * s.kv_heads * s.head_dim * b
    generation = kv_cache + rows * s.vocab * FP32 * 2  # the cache, the step's logits and their softmax
    tokens = t.per_device_batch_size * g.max_completion_length
    loss = tokens * s.vocab * (b + 2 * FP32)  # logits, their fp32 temperature-scaled copy, log-softmax
    parts = {"generation": generation, "logits / loss": loss}
    if g.beta:
        parts["reference"] = lora if job.method.type != "full" else weights
    return parts
