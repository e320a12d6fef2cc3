"""Convert a Hugging Face Qwen3 / Qwen3-MoE / Qwen2 / Llama folder into one GGUF file that llama.cpp and Ollama run.

Our own converter on the `gguf` package: architecture metadata, tensor names from gguf's TensorNameMap, the
GPT-2-style BPE tokenizer (tokens, token types, merges, special ids, chat template). Tensors are streamed:
a slab of rows at a time is read with plain reads (an mmap would keep every touched page resident),
converted and appended, so peak memory stays near one slab whatever the model size. f32/f16/bf16/q8_0
are written directly; k-quants are made from a lossless intermediate by llama.cpp's own quantizer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from tuneforge.errors import UserError, unreadable
from tuneforge.export import interrupt_as_user_error, refuse_existing
from tuneforge.export.gguf_types import DIRECT_TYPES, GGUF_TYPES, LLAMA_CPP_TYPES


def _file_type(qtype: str) -> gguf.LlamaFileType:
    """The GGUF file type a --type name stands for (gguf's enum spells them ALL_F32, MOSTLY_Q4_K_M, ...)."""
    return gguf.LlamaFileType["ALL_F32" if qtype == "f32" else f"MOSTLY_{qtype.upper()}"]


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face model_type maps to llama.cpp."""

    gguf_arch: gguf.MODEL_ARCH
    # Llama rotates interleaved pairs in llama.cpp but halves in transformers, so q/k rows are reordered.
    permute_qk: bool = False


ARCHS = {
    "qwen3": Arch(gguf.MODEL_ARCH.QWEN3),
    "qwen3_moe": Arch(gguf.MODEL_ARCH.QWEN3MOE),
    "qwen2": Arch(gguf.MODEL_ARCH.QWEN2),
    "llama": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
}

# The pre-tokenizer split regex decides how llama.cpp pre-splits text; these are the byte-level BPE ones we know.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    _QWEN2_SPLIT: "qwen2",
    _QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|"): "llama-bpe",  # Llama 3: digits in runs of up to three
}

_SLAB_ELEMENTS = 1 << 22  # rows read per step: about 16 MB as f32
_STORAGE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:])


@dataclass(frozen=True)
class Stacked:
    """Same-shaped tensors written one after another as one tensor of one more dimension: a MoE's experts."""

    parts: tuple[StoredTensor, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)


# One expert's projection in a Hugging Face MoE checkpoint: llama.cpp wants each layer's experts as one 3-D tensor.
_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def export_gguf(model_dir: Path, out: Path, qtype: str = "f16", force: bool = False) -> Path:
    """Write the Hugging Face model in `model_dir` as one GGUF file of type `qtype`."""
    if qtype not in GGUF_TYPES:
        raise UserError(f"--type {qtype}: expected one of {', '.join(GGUF_TYPES)}")
    refuse_existing(out, force)
    config = _read_config(model_dir)
    arch = ARCHS[config["model_type"]]
    tensors = _index_safetensors(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with interrupt_as_user_error(out), _temporary(out) as tmp:
        if qtype in DIRECT_TYPES:
            _write(model_dir, config, arch, tensors, tmp, qtype)
        else:
            quantize = _llama_cpp_quantizer()
            with _temporary(out) as intermediate:
                _write(model_dir, config, arch, tensors, intermediate, _lossless_type(tensors))
                quantize(intermediate, tmp, _file_type(qtype))
        os.replace(tmp, out)
    return out


def _read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a model folder, checked to be an architecture we convert."""
    config = _read_json(model_dir / "config.json")
    model_type = config.get("model_type")
    if model_type not in ARCHS:
        raise UserError(
            f"{model_dir / 'config.json'}: model_type '{model_type}' cannot be exported to GGUF; "
            f"supported: {', '.join(sorted(ARCHS))}"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(f"{model_dir / 'config.json'}: hidden_act '{config['hidden_act']}' (llama.cpp expects silu)")
    if model_type == "qwen3_moe":
        _check_moe(config, model_dir)
    return config


def _check_moe(config: dict[str, Any], model_dir: Path) -> None:
    """llama.cpp's qwen3moe: every layer a MoE block, top-k routing weights renormalised (as Qwen3-30B-A3B's)."""
    if not config.get("norm_topk_prob") or config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise UserError(
            f"{model_dir / 'config.json'}: llama.cpp's qwen3moe runs a MoE block in every layer with top-k weights "
            "renormalised; this config needs norm_topk_prob: true, mlp_only_layers: [] and decoder_sparse_step: 1"
        )


def _index_safetensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Name, dtype, shape and file offset of every tensor in the folder's safetensors files (headers only)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors files (export needs a merged or fully fine-tuned model)")
    found: dict[str, StoredTensor] = {}
    for file in files:
        # The header is parsed here (offsets are not exposed by safetensors' safe_open); a corrupt one fails as JSON.
        with (
            unreadable(file, "safetensors file", "re-save or re-download the model", ValueError),
            open(file, "rb") as f,
        ):
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, file.stat().st_size)))
        for name, info in header.items():
            if name != "__metadata__":
                offset = 8 + size + info["data_offsets"][0]
                found[name] = StoredTensor(file, info["dtype"], tuple(info["shape"]), offset)
    return dict(sorted(found.items()))  # the same GGUF whatever the sharding


def _vocab_arrays(tokenizer: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """GGUF token strings and token types for a tokenizer.json, padded to the embedding's vocab_size."""
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    by_id.update((i, t["content"]) for i, t in added.items())
    if max(by_id) >= vocab_size:
        raise UserError(f"tokenizer.json has token id {max(by_id)} but config.json vocab_size is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            # Embedding rows beyond the tokenizer (padding to a multiple of 128): never produced nor matched.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            # As llama.cpp's converter: <|...|> tokens are control tokens even where the tokenizer does not mark
            # them special (fim tokens), so llama.cpp hides them in output; <think> etc. stay visible.
            control = added[i].get("special") or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def read_metadata(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` in a GGUF file's metadata (absent keys are left out).

    gguf.GGUFReader builds numpy views of every vocabulary entry, seconds for a 150k-token vocabulary;
    this walks the key/value section once and decodes only what was asked for.
    """
    wanted, found = set(keys), {}
    fix = "export it again with `tuneforge export gguf`"
    with (
        unreadable(path, "GGUF file", fix, struct.error, ValueError, OverflowError, MemoryError),
        open(path, "rb") as f,
    ):
        magic, version, _, n_kv = struct.unpack("<IIQQ", f.read(24))
        if magic != gguf.GGUF_MAGIC or version < 2:
            raise UserError(f"{path}: not a GGUF file (version 2 or later)")
        for _ in range(n_kv):
            key = _read_value(f, gguf.GGUFValueType.STRING, keep=True)
            value = _read_value(f, gguf.GGUFValueType(_unpack(f, "<I")), keep=key in wanted)
            if key in wanted:
                found[key] = value
                if len(found) == len(wanted):
                    break
    return found


_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.UINT64: "<Q", gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d", gguf.GGUFValueType.BOOL: "<?",
}  # fmt: skip


def _read_value(f: BinaryIO, vtype: gguf.GGUFValueType, keep: bool) -> Any:
    if vtype == gguf.GGUFValueType.STRING:
        size = _unpack(f, "<Q")
        return f.read(size).decode("utf-8") if keep else f.seek(size, os.SEEK_CUR)
    if vtype == gguf.GGUFValueType.ARRAY:
        item_type, count = gguf.GGUFValueType(_unpack(f, "<I")), _unpack(f, "<Q")
        if item_type in _SCALAR_FORMATS and not keep:
            return f.seek(count * struct.calcsize(_SCALAR_FORMATS[item_type]), os.SEEK_CUR)
        return [_read_value(f, item_type, keep) for _ in range(count)]
    return _unpack(f, _SCALAR_FORMATS[vtype])


def _unpack(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _write(
    model_dir: Path, config: dict[str, Any], arch: Arch, tensors: dict[str, StoredTensor], path: Path, qtype: str
) -> None:
    qt, file_type = Q[qtype.upper()], _file_type(qtype)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    try:
        _add_hparams(writer, config, model_dir)
        writer.add_file_type(file_type)
        if qt == Q.Q8_0:
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_vocab(writer, model_dir, config["vocab_size"])
        plan = _plan(config, arch, tensors, qt, model_dir)
        for name, (stored, tensor_type) in plan.items():
            nbytes = _nbytes(stored.shape, tensor_type)
            writer.add_tensor_info(name, stored.shape, np.float32, nbytes, raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _stream_tensors(writer, plan, arch, _head_dim(config), path.name)
    finally:
        writer.close()


def _stream_tensors(
    writer: gguf.GGUFWriter, plan: dict[str, tuple[StoredTensor | Stacked, Q]], arch: Arch, head_dim: int, label: str
) -> None:
    """Append every tensor's data, slab by slab, each tensor aligned as its tensor info promised."""
    assert writer.fout is not None
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    with _progress(sum(_nbytes(s.shape, t) for s, t in plan.values()), label) as advance:
        for name, (stored, tensor_type) in plan.items():
            permute = arch.permute_qk and name.endswith(("attn_q.weight", "attn_k.weight"))
            parts = stored.parts if isinstance(stored, Stacked) else (stored,)
            for slab in (slab for part in parts for slab in _slabs(part, whole=permute)):
                data = gguf.quants.quantize(_permute_rows(slab, head_dim) if permute else slab, tensor_type)
                data.tofile(fout)
                advance(data.nbytes)
            writer.write_padding(fout, _nbytes(stored.shape, tensor_type))


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], model_dir: Path) -> None:
    def need(key: str) -> Any:
        if key not in config:
            raise UserError(f"{model_dir / 'config.json'}: missing '{key}'")
        return config[key]

    heads = need("num_attention_heads")
    writer.add_name(model_dir.name)
    writer.add_context_length(need("max_position_embeddings"))
    writer.add_embedding_length(need("hidden_size"))
    writer.add_feed_forward_length(need("intermediate_size"))
    writer.add_block_count(need("num_hidden_layers"))
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_layer_norm_rms_eps(need("rms_norm_eps"))
    writer.add_vocab_size(need("vocab_size"))
    if config["model_type"] == "qwen3_moe":
        writer.add_expert_count(config.get("num_experts") or need("num_local_experts"))
        writer.add_expert_used_count(need("num_experts_per_tok"))
        writer.add_expert_feed_forward_length(need("moe_intermediate_size"))
    # transformers >= 5 keeps rope settings in rope_parameters; older config.json files at the top level.
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind != "default":
        raise UserError(f"{model_dir / 'config.json'}: rope type '{kind}' is not supported (default, linear, yarn)")


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    tokenizer = _read_json(model_dir / "tokenizer.json")
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE" or (tokenizer.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"{model_dir / 'tokenizer.json'}: only byte-level BPE tokenizers (GPT-2 style) are supported")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, model_dir))
    tokens, types = _vocab_arrays(tokenizer, vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    del tokenizer, tokens, types
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # transformers >= 5 no longer saves add_bos_token; without the key llama.cpp would add a BOS the model never saw.
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer(tokenizer: dict[str, Any], model_dir: Path) -> str:
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    patterns = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    for pattern in patterns:
        if pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
    raise UserError(
        f"{model_dir / 'tokenizer.json'}: unknown pre-tokenizer; GGUF export knows those of "
        f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))} (Qwen2/Qwen3 and Llama 3 tokenizers)"
    )


def _plan(
    config: dict[str, Any], arch: Arch, tensors: dict[str, StoredTensor], qt: Q, model_dir: Path
) -> dict[str, tuple[StoredTensor | Stacked, Q]]:
    names = gguf.get_tensor_name_map(arch.gguf_arch, config["num_hidden_layers"])
    plan: dict[str, tuple[StoredTensor | Stacked, Q]] = {}
    experts: dict[str, dict[int, StoredTensor]] = {}
    for hf_name, stored in tensors.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # tied: llama.cpp reuses token_embd
        if stored.dtype not in _STORAGE:
            raise UserError(f"{stored.file}: tensor {hf_name} is {stored.dtype}; export needs a 16/32-bit checkpoint")
        if expert := _EXPERT.fullmatch(hf_name):
            experts.setdefault(f"{expert[1]}.{expert[3]}", {})[int(expert[2])] = stored
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"{stored.file}: tensor {hf_name} has no place in a {config['model_type']} GGUF")
        plan[name] = (stored, _tensor_type(name, stored.shape, qt))
    for hf_name, parts in experts.items():
        stacked = Stacked(tuple(parts[i] for i in sorted(parts)))
        if sorted(parts) != list(range(len(parts))) or len({p.shape for p in stacked.parts}) > 1:
            raise UserError(f"{model_dir}: the experts of {hf_name} are not numbered 0..n-1 with one shape")
        name = f"{names.get_name(hf_name)}.weight"
        plan[name] = (stacked, _tensor_type(name, stacked.shape, qt))
    return plan


def _tensor_type(name: str, shape: tuple[int, ...], qt: Q) -> Q:
    if len(shape) == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight")):
        return Q.F32  # norms, biases and MoE routers: tiny, and llama.cpp's converter keeps them f32
    if qt == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16  # rows must fill whole q8_0 blocks
    return qt


def _nbytes(shape: tuple[int, ...], qt: Q) -> int:
    return math.prod(gguf.quants.quant_shape_to_byte_shape(shape, qt))


def _slabs(stored: StoredTensor, whole: bool = False) -> Iterator[np.ndarray]:
    """The tensor as float32 row slabs, read from disk one slab at a time."""
    storage = np.dtype(_STORAGE[stored.dtype])
    step = stored.rows if whole else max(1, _SLAB_ELEMENTS // max(1, stored.row_elements))
    with open(stored.file, "rb", buffering=0) as f:
        for start in range(0, stored.rows, step):
            rows = min(step, stored.rows - start)
            raw = np.empty(rows * stored.row_elements, dtype=storage)
            f.seek(stored.offset + start * stored.row_elements * storage.itemsize)
            if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
                raise UserError(f"{stored.file}: file is shorter than its header says (truncated download?)")
            yield _to_f32(raw).reshape((rows, *stored.shape[1:]))


def _to_f32(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint16:  # bfloat16: the high half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def _permute_rows(weight: np.ndarray, head_dim: int) -> np.ndarray:
    """Reorder each head's rows from transformers' rotate-half layout to llama.cpp's interleaved pairs."""
    heads = weight.shape[0] // head_dim
    return weight.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _lossless_type(tensors: dict[str, StoredTensor]) -> str:
    """The narrowest GGUF type that holds every tensor exactly: the k-quant input."""
    dtypes = {t.dtype for t in tensors.values() if len(t.shape) > 1}
    return {frozenset({"BF16"}): "bf16", frozenset({"F16"}): "f16"}.get(frozenset(dtypes), "f32")


_NO_LLAMA_CPP = (
    f"--type {', '.join(LLAMA_CPP_TYPES)} use llama.cpp's quantizer: pip install 'tuneforge[llamacpp]' "
    f"(or export --type q8_0 / f16, which need nothing extra)"
)


def check_gguf_type(qtype: str) -> None:
    """Fail, without importing anything heavy, where `qtype` is unknown or needs llama.cpp and it is missing."""
    import importlib.util

    if qtype not in GGUF_TYPES:
        raise UserError(f"--type {qtype}: expected one of {', '.join(GGUF_TYPES)}")
    if qtype in LLAMA_CPP_TYPES and importlib.util.find_spec("llama_cpp") is None:
        raise UserError(_NO_LLAMA_CPP)


def check_architecture(model_dir: Path) -> None:
    """Fail where the model in `model_dir` (its config.json) cannot be converted to GGUF."""
    _read_config(model_dir)


def gguf_bytes(model_dir: Path, qtype: str) -> int:
    """About the disk space writing the `qtype` GGUF of `model_dir` takes (k-quants: with their lossless input)."""
    weights = sum(math.prod(t.shape) for t in _index_safetensors(model_dir).values())
    if qtype in DIRECT_TYPES:
        return int(weights * _BYTES_PER_WEIGHT[qtype])
    return int(weights * (_BYTES_PER_WEIGHT["q6_k"] + _BYTES_PER_WEIGHT["f32"]))  # the intermediate may be f32


# Storage per weight of each type (q8_0: 34 bytes per 32 weights; q6_k, the largest k-quant: 210 per 256).
_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q6_k": 210 / 256}


def _llama_cpp_quantizer() -> Callable[[Path, Path, gguf.LlamaFileType], None]:
    try:
        import llama_cpp
    except ImportError:
        raise UserError(_NO_LLAMA_CPP) from None

    def quantize(source: Path, target: Path, file_type: gguf.LlamaFileType) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(file_type)
        params.nthread = os.cpu_count() or 1
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
        if status != 0:
            raise UserError(f"{target}: llama.cpp's quantizer failed (status {status}); see its log above")

    return quantize


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A fresh name beside `path` (same filesystem, so the final rename is atomic), removed afterwards.

    Only the name is reserved: the writer creates the file, so it gets the usual permissions (mkstemp's are 0600).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"writing {label}", total=total)
        yield lambda n: progress.advance(task, n)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: not found (expected a Hugging Face model folder)")
    return json.loads(path.read_text(encoding="utf-8"))
