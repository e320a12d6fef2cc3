"""Inference memory (`tuneforge estimate --serve`): the built-in server's peak, and what vLLM makes of its share.

From config.json alone, as the training estimate (estimate/memory.py), whose weight terms it reuses:

- weights: as inference loads them: 16-bit in the model dtype, or for `method.type: qlora` the bitsandbytes 4/8-bit
  layers QLoRA trained on (chat / eval / serve load a QLoRA run's base that way), plus a LoRA adapter in fp32;
- KV cache: per token 2 (K and V) × layers × KV heads × head size, in the model dtype; times the context and the
  sequences generated together (`--max-num-seqs`): the worst case, every sequence at the full context;
- prefill: one layer's transient tensors over the tokens of one prompt (q, k, v, attention output, the MLP's gate, up
  and their product; freed layer by layer), and one row of logits per sequence;
- on a GPU the CUDA context and the caching allocator's slack, as for training; on a CPU the tokenizer and, for
  more than one sequence, the engine's prepacked copy of the output embedding.

vLLM takes `gpu_memory_utilization` × the GPU for itself; after the weights and its profiled prefill (up to
`max_num_batched_tokens` tokens at once) the rest holds KV blocks: how many tokens fit, and so how many sequences of
the full context can run together.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.estimate.host import tokenizer_bytes
from tuneforge.estimate.memory import ALLOCATOR_SLACK, CUDA_CONTEXT, GIB, Job, estimate, gib, loaded_quantization

VLLM_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens with chunked prefill (V1 engine)


@dataclass(frozen=True)
class ServeEstimate:
    """Bytes of one inference process by component, for `sequences` sequences of `context` tokens."""

    job: Job
    context: int
    sequences: int
    weights: float
    kv_per_token: float
    prefill: float
    overhead: float

    @property
    def kv_cache(self) -> float:
        """The KV cache with every sequence at the full context."""
        return self.kv_per_token * self.context * self.sequences

    @property
    def total(self) -> float:
        """The peak: weights, the whole KV cache, one prefill, and the framework's share."""
        return self.weights + self.kv_cache + self.prefill + self.overhead

    @property
    def vllm_fixed(self) -> float:
        """What vLLM holds before KV blocks: the weights, its profiled prefill (up to its batched tokens), CUDA."""
        return self.weights + self.prefill_of(min(self.context, VLLM_BATCHED_TOKENS)) + CUDA_CONTEXT

    def vllm_kv_tokens(self, gpu_bytes: float, utilization: float) -> int:
        """Tokens of KV cache vLLM has room for in `utilization` of a GPU of `gpu_bytes` (0: the weights do not fit)."""
        return max(0, int((utilization * gpu_bytes - self.vllm_fixed) // self.kv_per_token))

    def vllm_gpu_bytes(self, utilization: float) -> float:
        """The smallest GPU on which vLLM at `utilization` holds its fixed part and every sequence's full KV cache."""
        return (self.vllm_fixed + self.kv_cache) / utilization

    def prefill_of(self, tokens: int) -> float:
        """One layer's transient tensors over `tokens` prompt tokens, plus a row of fp32 logits per sequence."""
        s, b = self.job.shape, self.job.dtype_bytes
        per_token = b * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + 3 * s.intermediate)
        return tokens * per_token + self.sequences * s.vocab * 4


def estimate_serve(job: Job, context: int, sequences: int = 1) -> ServeEstimate:
    """Inference memory of `job`'s model (its method decides 16-bit or quantized weights, and a LoRA adapter)."""
    train = estimate(job)
    weights = train.parts["weights"] + train.parts["LoRA weights"]
    s = job.shape
    kv_per_token = 2 * s.layers * s.kv_heads * s.head_dim * job.dtype_bytes
    est = ServeEstimate(job, context, sequences, weights, kv_per_token, 0.0, 0.0)
    prefill = est.prefill_of(context)
    tensors = weights + est.kv_cache + prefill
    if job.device == "cuda":
        overhead = CUDA_CONTEXT + ALLOCATOR_SLACK * tensors
    else:  # the tokenizer (estimate/host.py); batches of rows multiply a prepacked copy of the head (infer/cpu_head.py)
        overhead = tokenizer_bytes(s.vocab) + (s.vocab * s.hidden * job.dtype_bytes if sequences > 1 else 0)
    return ServeEstimate(job, context, sequences, weights, kv_per_token, prefill, overhead)


def serve_report(est: ServeEstimate, gpu_sizes: tuple[float, ...], utilization: float) -> list[str]:
    """The lines `estimate --serve` prints: the parts, the total, and per GPU size the built-in and vLLM verdicts."""
    job = est.job
    quantization = loaded_quantization(job)
    weights = f"{quantization[0]}-bit {quantization[1]}" if quantization else f"{job.dtype_bytes * 8}-bit"
    lines = [
        f"inference memory: {job.shape.params / 1e9:.2f} B params ({weights} weights), {est.context}-token context "
        f"× {est.sequences} sequence(s)",
        f"  weights      {gib(est.weights)}",
        f"  KV cache     {gib(est.kv_cache)}  ({est.kv_per_token / 1024:.0f} KiB per token)",
        f"  prefill      {gib(est.prefill)}",
    ]
    if est.overhead:
        lines.append(f"  framework    {gib(est.overhead)}  (CUDA context, allocator slack)")
    lines.append(f"  total        {gib(est.total)}")
    for size in gpu_sizes:
        fits = "fits" if est.total <= size * GIB else "does not fit"
        tokens = est.vllm_kv_tokens(size * GIB, utilization)
        vllm = (
            f"vLLM at gpu_memory_utilization {utilization:g}: KV room for {tokens:,} tokens "
            f"({tokens // est.context} sequence(s) of {est.context})"
            if tokens
            else f"vLLM at gpu_memory_utilization {utilization:g}: the weights do not fit"
        )
        lines.append(f"{size:g} GB: built-in server {fits}; {vllm}")
    return lines
