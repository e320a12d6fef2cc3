"""Memory per device for one training job, from the model's config.json alone (no weights are read).

Each term follows what the code actually allocates (transformers 5 Qwen3 modelling, peft LoRA, bitsandbytes,
tuneforge's loss), in bytes, for one micro-batch of `per_device_batch_size` rows of `data.max_length` tokens (the
worst case: packed rows are never wider than the longest sample, data/collate.py):

- weights: every parameter in the model dtype; for qlora the decoder's linear layers in 4 bits plus their block
  scales (blocksize 64: fp32 absmax, or with double quant an 8-bit absmax plus one fp32 per 256 blocks) or 8 bits
  plus one fp32 scale per output row; full fine-tuning in fp16 keeps fp32 weights (model/load.py);
- LoRA weights r·(in + out) per target layer, in fp32 (peft's autocast_adapter_dtype);
- gradients of what trains, in the dtype of what trains;
- optimizer state: AdamW two moments in the parameters' dtype (8-bit: one byte each), Adafactor its factored
  second moment; DeepSpeed adds fp32 master weights and keeps fp32 moments;
- optimizer step: torch AdamW's temporaries (see `_step_temporaries`);
- activations: what autograd keeps per token and decoder layer (see `_layer_bytes`), all layers without
  checkpointing, the layer inputs plus one recomputed layer with it; eager attention adds its score matrices;
- the logits/loss buffer: full [tokens × vocab] logits with their fp32 copies for train.loss standard, one chunk
  for chunked (model/loss.py), plus an fp32 gradient of lm_head where it trains;
- framework overhead: on a GPU the CUDA context and cuBLAS workspace plus the caching allocator's slack; on a CPU
  the tokenizer and the prepared data, which share the RAM (estimate/host.py);
- ZeRO-2 shards gradients and optimizer state over the processes, ZeRO-3 and FSDP the weights too (plus the
  gathered layers in flight); offload moves optimizer state (and for ZeRO-3 / FSDP the weights) to CPU memory;
- preference objectives (train/preference.py): a pair runs as two rows (chosen and rejected), so activations and
  the loss buffer count two rows per sample (KTO one: its KL rows and every reference forward run without
  gradients, so autograd keeps nothing of them); ORPO and SimPO (TRL's ORPO / CPO trainers) build full logits, DPO
  and KTO score through TRL's fused LM head in tiles (sized here as the chunked loss); the reference of dpo / kto
  is a frozen copy of the weights for full fine-tuning (none when precomputed) and of the adapter for LoRA.

The peak (`Estimate.total`) is not the sum: weights, LoRA weights, optimizer state and a reference live throughout,
plus the larger of activations + logits/loss (start of backward) and gradients + step temporaries (the optimizer
step).
Summing both over-counted full fine-tuning by 12 % on a measured Qwen3-0.6B run (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tuneforge.config import Config, DistributedConfig, MethodConfig, ModelConfig, TrainConfig
from tuneforge.errors import UserError
from tuneforge.estimate.checkpoint import Experts, SavedQuantization, experts, saved_quantization, skipped
from tuneforge.estimate.host import host_overhead
from tuneforge.estimate.shapes import PUBLISHED_SHAPES
from tuneforge.objective import Objective
from tuneforge.strategy import Strategy

GIB = 2**30
FP32 = 4
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes 4-bit block size and double-quant block size
CUDA_CONTEXT = 0.6 * GIB  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator, inside the GPU
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation, as a share of the tensors
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes 8-bit optimizers keep smaller tensors' state in 32 bits


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that memory depends on."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    quantization: SavedQuantization | None = None  # a pre-quantized checkpoint's own (estimate/checkpoint.py)
    experts: Experts | None = None  # Qwen3-MoE: `intermediate` is then the active experts' width per token

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        """From a transformers config (or a config.json mapping)."""
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        if not hidden or not heads or not get("intermediate_size") or not get("num_hidden_layers"):
            raise UserError(
                "model config.json: hidden_size, intermediate_size, num_hidden_layers and "
                "num_attention_heads are needed to estimate memory (a decoder-only model)"
            )
        moe = experts(get)
        return cls(
            vocab=get("vocab_size"),
            hidden=hidden,
            intermediate=moe.active * moe.intermediate if moe else get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            tied=bool(get("tie_word_embeddings", False)),
            quantization=saved_quantization(get, get("_name_or_path") or "the checkpoint"),
            experts=moe,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer (MoE: the experts are not linear layers)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        if self.experts is not None:
            return attention  # the experts are fused 3-D tensors and the router its own module (transformers 5)
        return attention | {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def expert_params(self) -> int:
        """Parameters of every expert of every layer (gate, up, down each; all resident) and of the routers."""
        e = self.experts
        return self.layers * e.count * (3 * self.hidden * e.intermediate + self.hidden) if e else 0

    @property
    def kept_linear_params(self) -> int:
        """Decoder linear parameters a pre-quantized checkpoint keeps 16-bit (llm_int8_skip_modules)."""
        skip = self.quantization.skip if self.quantization else ()
        if not skip:
            return 0
        linears = self.linears().items()
        return sum(a * b for layer in range(self.layers) for name, (a, b) in linears if skipped(name, layer, skip))

    @property
    def linear_params(self) -> int:
        """Parameters in all decoder linear layers (what bitsandbytes quantizes)."""
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def params(self) -> int:
        """All parameters: embeddings, (untied) lm_head, decoder linears, RMSNorm weights."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = self.layers * (2 * self.hidden + 2 * self.head_dim) + self.hidden
        return embed + self.linear_params + self.expert_params + norms


def load_shape(model: ModelConfig) -> Shape:
    """The model's shape from its config.json (local folder or hub); published ids (estimate/shapes.py) work offline."""
    from tuneforge.model.load import load_model_config

    try:
        return Shape.from_config(load_model_config(model))
    except UserError:
        if model.name_or_path not in PUBLISHED_SHAPES:
            raise
    return Shape.from_config(PUBLISHED_SHAPES[model.name_or_path])


@dataclass(frozen=True)
class Job:
    """What memory depends on: the model's shape and the config sections that size a training step."""

    shape: Shape
    model: ModelConfig
    method: MethodConfig
    train: TrainConfig
    dist: DistributedConfig = field(default_factory=DistributedConfig)
    max_length: int = 2048
    packing: bool = True
    device: str = "cuda"  # "cuda": a GPU (auto dtype bf16); "cpu": this machine's RAM (auto dtype fp32)
    tokens: int = 0  # tokens of the prepared data (0: not prepared), which a CPU run holds beside its tensors

    @classmethod
    def from_config(cls, cfg: Config, shape: Shape, device: str = "cuda", longest: int = 0, tokens: int = 0) -> Job:
        """The job a full config describes; `longest` (the longest prepared sample) narrows rows below max_length,
        `tokens` (all prepared tokens) sizes the prepared data a CPU run holds."""
        width = min(cfg.data.max_length, longest) if longest else cfg.data.max_length
        if Objective.of(cfg.method).sample == "prompt":  # GRPO (issue 27): a row is a prompt and its completion
            width = longest or cfg.data.max_length + cfg.method.grpo.max_completion_length
        return cls(shape, cfg.model, cfg.method, cfg.train, cfg.distributed, width, cfg.data.packing, device, tokens)

    def but(self, **changes: Any) -> Job:
        """A copy with section fields changed, e.g. but(train={'per_device_batch_size': 1})."""
        updates = {k: getattr(self, k).model_copy(update=v) if isinstance(v, dict) else v for k, v in changes.items()}
        return replace(self, **updates)

    @property
    def world_size(self) -> int:
        """Processes taking part."""
        return self.dist.nproc * self.dist.nnodes

    @property
    def dtype_bytes(self) -> int:
        """Bytes per value of the model dtype (auto: bf16 on a GPU, fp32 on the CPU)."""
        name = self.model.dtype if self.model.dtype != "auto" else ("bf16" if self.device == "cuda" else "fp32")
        return {"bf16": 2, "fp16": 2, "fp32": 4}[name]

    @property
    def strategy(self) -> Strategy:
        """How the processes would share the work."""
        return Strategy.of(self.dist, self.world_size)

    @property
    def sharding(self) -> str:
        """none, zero2, zero3 or fsdp, with '+offload' where state moves to CPU memory."""
        return self.strategy.sharding


@dataclass
class Estimate:
    """Bytes per device by component; `offloaded` is what the strategy keeps in CPU memory instead."""

    job: Job
    parts: dict[str, float]
    notes: dict[str, str]
    offloaded: float = 0.0

    @property
    def total(self) -> float:
        """The peak on one device: what lives throughout, plus the larger of two phases that do not overlap.

        Backward frees each layer's activations as it makes that layer's gradients, and the optimizer step runs
        once the activations and loss buffers are gone: so the peak holds either the activations and loss buffers
        (start of backward) or every gradient and the step's temporaries (the step), not both.
        """
        p = self.parts
        backward = p["activations"] + p["logits / loss"]
        step = p["gradients"] + p["optimizer step"]
        lasting = p["weights"] + p["LoRA weights"] + p["optimizer state"] + p.get("reference", 0.0)
        # GRPO's sampling (estimate/grpo.py) is a third phase, before the loss.
        return lasting + max(backward, step, p.get("generation", 0.0)) + p.get("framework overhead", 0.0)

    @property
    def tensors(self) -> float:
        """What torch allocates (all but the framework overhead: CUDA context and slack, or tokenizer and data)."""
        return self.total - self.parts.get("framework overhead", 0.0)


def _lora_modules(job: Job) -> dict[str, tuple[int, int]]:
    """The decoder linear layers LoRA wraps (all-linear: all of them; peft leaves lm_head out)."""
    targets = job.method.target_modules
    linears = job.shape.linears()
    if targets == "all-linear":
        return linears
    names = [targets] if isinstance(targets, str) else targets
    return {name: dims for name, dims in linears.items() if any(name == t or name.endswith(t) for t in names)}


def _trainable(job: Job) -> tuple[int, list[tuple[int, int]], int]:
    """(trainable parameters, their matrices as (rows, cols), bytes per trainable value)."""
    s = job.shape
    if job.method.type == "full":
        per_layer = [(o, i) for i, o in s.linears().values()] * s.layers
        embeddings = [(s.vocab, s.hidden)] * (1 if s.tied else 2)
        width = FP32 if job.model.dtype == "fp16" else job.dtype_bytes
        return s.params, per_layer + embeddings + _expert_tensors(s), width
    r = job.method.rank
    matrices = [m for i, o in _lora_modules(job).values() for m in ((r, i), (o, r))] * s.layers
    extra = [(s.vocab, s.hidden)] * sum(1 for m in job.method.modules_to_save or [] if m in ("lm_head", "embed_tokens"))
    return sum(a * b for a, b in matrices + extra), matrices + extra, FP32


def loaded_quantization(job: Job) -> tuple[int, str, bool] | None:
    """(bits, quant type, double quant) of the decoder linears as loaded: a pre-quantized checkpoint's own (LoRA on
    it is QLoRA), else method.type qlora's; None for 16 bit."""
    saved, m = job.shape.quantization, job.method
    if saved is not None and m.type != "full":
        return saved.bits, saved.quant_type, saved.double_quant
    return (m.bits, m.quant_type, m.double_quant) if m.type == "qlora" else None


def _expert_tensors(s: Shape) -> list[tuple[int, int]]:
    """A MoE's expert and router parameters as the tensors transformers 5 keeps: fused gate_up, down, router."""
    e = s.experts
    if e is None:
        return []
    fused = [(e.count * 2 * e.intermediate, s.hidden), (e.count * s.hidden, e.intermediate), (e.count, s.hidden)]
    return fused * s.layers


def _weights(job: Job) -> float:
    s, w = job.shape, job.dtype_bytes
    if job.method.type == "full":
        return s.params * (FP32 if job.model.dtype == "fp16" else w)
    quantization = loaded_quantization(job)
    if quantization is None:
        return s.params * w
    bits, _, double_quant = quantization
    linears = s.linear_params - s.kept_linear_params  # what bitsandbytes holds; skipped modules stay 16-bit
    if bits == 8:
        rows = s.layers * sum(o for _, o in s.linears().values())
        quantized = linears + FP32 * rows  # int8 weights plus one fp32 scale per output row
    else:
        scales = 1 / NF4_BLOCK + FP32 / (NF4_BLOCK * NESTED_BLOCK) if double_quant else FP32 / NF4_BLOCK
        quantized = linears * (0.5 + scales)
    return quantized + (s.params - linears) * w


def _optimizer(job: Job, trainable: int, matrices: list[tuple[int, int]], width: int) -> float:
    if job.strategy.name == "deepspeed":  # DeepSpeed's own AdamW: fp32 moments and fp32 master weights
        return trainable * (2 * FP32 + (FP32 if width < FP32 else 0))
    name = job.train.optim
    if name == "adafactor":
        return sum((rows + cols) * FP32 for rows, cols in matrices)
    if name.endswith("_8bit"):
        big = sum(a * b for a, b in matrices if a * b >= BNB_8BIT_MIN_SIZE)
        return 2 * big * (1 + FP32 / 2048) + 2 * (trainable - big) * FP32  # 8-bit blocks of 2048 with fp32 absmax
    return 2 * trainable * width


def _step_temporaries(job: Job, trainable: int, matrices: list[tuple[int, int]], width: int) -> float:
    """What torch's AdamW allocates during its step besides its state.

    On a GPU torch runs the foreach implementation: sqrt(v) for every parameter at once, one tensor per parameter
    in its dtype. On the CPU it loops over parameters: sqrt(v) and its division by the bias correction, two
    temporaries the size of the parameter it is on. bitsandbytes' 8-bit / paged kernels and DeepSpeed's Adam update
    in place; Adafactor's temporaries are not modelled.
    """
    if job.train.optim != "adamw_torch" or job.dist.strategy == "deepspeed":
        return 0.0
    if job.device == "cuda":
        return trainable * width
    return 2 * max(a * b for a, b in matrices) * width


def _layer_bytes(job: Job, rows: int, width: int) -> float:
    """What autograd keeps for one decoder layer's backward, for `rows` × `width` tokens.

    Per token: each RMSNorm keeps its fp32 input and its output (the projections' input); q_norm / k_norm the
    same over the heads; RoPE's rotated q and k, v, the attention output and its fp32 logsumexp for the kernel's
    backward; SwiGLU its gate, silu(gate), up and their product. LoRA adds per wrapped layer a copy of its input
    where a cast or dropout makes one (plus dropout's byte mask) and the rank-r middle.
    """
    s, b = job.shape, job.dtype_bytes
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_token = (
        2 * (FP32 + b) * s.hidden
        + (FP32 + b) * (q + kv)
        + b * (q + kv)
        + b * kv
        + b * q
        + FP32 * s.heads
        + 4 * b * s.intermediate
    )
    if job.method.type != "full":
        dropout = job.method.dropout > 0
        for fan_in, _ in _lora_modules(job).values():
            # peft casts x to the adapter's fp32; lora_A keeps that input for its gradient, which bf16 / fp16
            # autocast turns back into a b-byte copy. Dropout keeps a byte mask besides.
            copies = b * fan_in if (dropout or b < FP32) else 0
            per_token += copies + (fan_in if dropout else 0) + FP32 * job.method.rank
    attn = job.model.attn
    scores = rows * s.heads * width * width * (FP32 + b) if attn == "eager" else 0  # fp32 softmax + its cast
    return rows * width * per_token + scores


def _rows(job: Job) -> int:
    """Rows of one micro-batch that autograd keeps: per_device_batch_size samples, two rows per pair."""
    return job.train.per_device_batch_size * Objective.of(job.method).rows_per_sample


def _loss_buffer(job: Job) -> str:
    """The logits buffer the trainer builds: the objective's TRL trainer's (module docstring), else train.loss."""
    return Objective.of(job.method).loss_buffer or job.train.loss


def _activations(job: Job) -> float:
    s, b = job.shape, job.dtype_bytes
    rows, width = _rows(job), job.max_length
    tokens = rows * width
    layer = _layer_bytes(job, rows, width)
    # sdpa and eager get a boolean [rows × 1 × width × width] mask (padding or packed block-diagonal), built once.
    attn = job.model.attn if job.model.attn != "auto" else ("sdpa" if job.device == "cpu" else "flash_attention_2")
    mask = rows * width * width if attn in ("sdpa", "eager") else 0
    embeddings = 2 * tokens * s.hidden * b  # embedding output and the final norm's
    if job.train.gradient_checkpointing:
        # Each layer keeps only its input; backward recomputes one layer at a time and builds its gradients.
        return s.layers * tokens * s.hidden * b + 2 * layer + mask + embeddings
    return s.layers * layer + layer + mask + embeddings  # all layers, plus the gradients of the first one back


def _loss(job: Job, trainable_head: bool) -> float:
    s, b = job.shape, job.dtype_bytes
    tokens = _rows(job) * job.max_length
    head_grad = FP32 * s.vocab * s.hidden if trainable_head else 0
    if _loss_buffer(job) == "standard":
        # Logits in the model dtype (kept in the output), their fp32 copy, log-softmax and its gradient in fp32.
        copies = 3 if b == FP32 else 4
        return tokens * s.vocab * (b + FP32 * (copies - 1)) + head_grad
    from tuneforge.model.loss import chunk_tokens

    chunk = min(tokens, chunk_tokens(s.vocab))
    # A chunk's fp32 logits (softmax in place) and their cast from the model dtype; past the first chunk the loop
    # computes the next chunk's logits while the previous chunk's buffer is still bound, so two are alive at once
    # (the second as long as the tokens left).
    rows = chunk + min(chunk, tokens - chunk)
    logits = rows * s.vocab * FP32 + chunk * s.vocab * (b if b < FP32 else 0)
    return logits + 2 * tokens * s.hidden * b + head_grad


def _reference(job: Job, lora: float) -> float:
    """The reference model of dpo / kto: a frozen copy of the weights (full, unless precomputed) or of the adapter."""
    if job.method.type != "full":
        return lora  # TRL's frozen "ref" adapter beside the trained one (even when its log-probs are precomputed)
    return 0.0 if job.method.reference == "precomputed" else _weights(job)


def estimate(job: Job) -> Estimate:
    """Memory per device for `job`, split by component."""
    trainable, matrices, width = _trainable(job)
    world = job.world_size
    sharding = job.sharding
    full_head = job.method.type == "full" or "lm_head" in (job.method.modules_to_save or [])
    weights = _weights(job)
    lora = 0.0 if job.method.type == "full" else trainable * FP32
    grads = trainable * width
    optim = _optimizer(job, trainable, matrices, width)
    temps = _step_temporaries(job, trainable, matrices, width)
    offloaded = 0.0
    notes: dict[str, str] = {}
    shard_grads = sharding != "none"
    shard_weights = sharding.startswith(("zero3", "fsdp"))
    if shard_grads:
        grads /= world
        optim /= world
        temps /= world
        notes["gradients"] = notes["optimizer state"] = f"sharded over {world} processes ({sharding})"
    layer = weights / max(job.shape.layers, 1)
    if shard_weights:
        weights = weights / world + 2 * layer  # plus the gathered layer in use and the one prefetched
        notes["weights"] = f"sharded over {world} processes, plus two gathered layers"
    if sharding.endswith("+offload"):
        offloaded += optim
        optim = temps = 0.0  # the step runs on the CPU
        notes["optimizer state"] = "in CPU memory (offload)"
        if shard_weights:
            offloaded += weights - 2 * layer
            weights = 2 * layer
            notes["weights"] = "in CPU memory (offload), gathered layer by layer"
    elif sharding == "none" and world > 1:
        grads *= 2  # DDP reduces gradients through buckets of the same size
        notes["gradients"] = "plus DDP's all-reduce buckets"
    parts = {
        "weights": weights,
        "LoRA weights": lora,
        "gradients": grads,
        "optimizer state": optim,
        "optimizer step": temps,
        "activations": _activations(job),
        "logits / loss": _loss(job, full_head),
    }
    if Objective.of(job.method).reference:
        parts["reference"] = _reference(job, lora)
    if Objective.of(job.method).sample == "prompt":  # GRPO (issue 27): it samples answers before the loss
        from tuneforge.estimate.grpo import grpo_parts

        parts.update(grpo_parts(job, lora, weights))
        notes["generation"] = "KV cache of the generation batch while sampling (before the loss, not beside it)"
    est = Estimate(job, parts, notes, offloaded)
    if job.device == "cuda":
        parts["framework overhead"] = CUDA_CONTEXT + ALLOCATOR_SLACK * est.tensors
    else:  # the same RAM holds the tokenizer and the prepared data (estimate/host.py)
        parts["framework overhead"] = host_overhead(job.shape.vocab, job.tokens)
        notes["framework overhead"] = f"tokenizer, {job.tokens:,} prepared tokens (not tensors)"
    notes.setdefault("weights", _weights_note(job))
    if "reference" in parts:
        copy = f"a frozen copy of the {'weights' if job.method.type == 'full' else 'adapter'}"
        notes["reference"] = copy if parts["reference"] else "log-probs precomputed before training"
    notes["activations"] = (
        f"{_rows(job)} × {job.max_length} tokens, checkpointing "
        f"{'on' if job.train.gradient_checkpointing else 'off'}, attention {job.model.attn}"
    )
    notes["logits / loss"] = "full logits (standard)" if _loss_buffer(job) == "standard" else "chunked over the vocab"
    notes["optimizer step"] = "the total counts the larger of activations + logits/loss and gradients + this"
    return est


def _weights_note(job: Job) -> str:
    quantization, s = loaded_quantization(job), job.shape
    experts = f" ({s.experts.count} experts, {s.experts.active} active)" if s.experts else ""
    if quantization is not None:
        bits, quant_type, double_quant = quantization
        kind = f"{quant_type}{' + double quant' if double_quant else ''}" if bits == 4 else "int8"
        saved = ", as the checkpoint saved them" if s.quantization else ""
        return f"{s.params / 1e9:.2f} B params{experts}, decoder linears {bits}-bit {kind}{saved}"
    return f"{s.params / 1e9:.2f} B params{experts}, {job.dtype_bytes * 8}-bit"


def gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / GIB:.2f} GiB"
