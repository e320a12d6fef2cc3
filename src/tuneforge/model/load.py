"""Load the tokenizer and the base model: from a local folder, Hugging Face or ModelScope, 16-bit or quantized.

GPU-dependent choices (bf16 or fp16, flash-attn 2) are read from `torch.cuda` queries only, so tests can
monkeypatch them on a CPU machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import MethodConfig, ModelConfig, looks_like_path, not_found
from tuneforge.errors import UserError
from tuneforge.io import check_writable

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

AMPERE = (8, 0)  # first compute capability with native bf16 and flash-attn 2
# --device-map: accelerate's strategies for spreading a model over several GPUs (chat, eval, serve).
DEVICE_MAPS = ("auto", "balanced", "sequential")
# Any of these makes a folder a tokenizer (fast, or slow BPE / SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def resolve_model_path(cfg: ModelConfig) -> str:
    """A local folder for `cfg.name_or_path` (downloaded from ModelScope if asked), or the hub id itself."""
    name = cfg.name_or_path
    if Path(name).is_dir():
        return name
    if looks_like_path(name):
        raise UserError(not_found("model.name_or_path", name) + "; expected a model folder or an org/name hub id")
    if cfg.cache_dir and not Path(cfg.cache_dir).is_dir():
        # Downloads go there, and a folder that cannot be made fails deep in the hub client, blamed on the hub. An
        # existing read-only folder passes: a shared cache that already holds the model is only read.
        check_writable(Path(cfg.cache_dir), "model.cache_dir", folder=True)
    if cfg.hub == "modelscope":
        try:
            from modelscope import snapshot_download
        except ImportError:
            raise UserError(
                "model.hub: modelscope needs the modelscope package: pip install 'tuneforge[modelscope]'"
            ) from None
        try:
            # Resumes a partial download by itself; files land in cache_dir or ~/.cache/modelscope.
            return snapshot_download(name, revision=cfg.revision, cache_dir=cfg.cache_dir)
        except Exception as exc:  # modelscope raises many types; all mean "not fetched"
            raise UserError(_not_found(cfg, exc)) from None
    return name


def _load_error(cfg: ModelConfig, source: str, exc: BaseException) -> str:
    """One line for a failed load: what is wrong inside a local folder, or why a hub id could not be fetched."""
    if not Path(source).is_dir():
        return _not_found(cfg, exc)
    key = "model.tokenizer" if source == cfg.tokenizer else "model.name_or_path"
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return f"{key}: {source}: could not be loaded ({reason}); re-download or re-save this folder"


def _not_found(cfg: ModelConfig, exc: BaseException) -> str:
    if cfg.hub == "huggingface":
        source = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            source += ", offline: HF_HUB_OFFLINE is set, so only the local cache was searched"
    else:
        source = "https://modelscope.cn"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    other = "modelscope" if cfg.hub == "huggingface" else "huggingface"
    return (
        f"model.name_or_path: '{cfg.name_or_path}' is not a local folder and could not be fetched from "
        f"{cfg.hub} ({source}): {reason[:200].rstrip('.')}. Check the id and model.revision, the network "
        f"(or HF_ENDPOINT, HF_HUB_OFFLINE), or set model.hub: {other}"
    )


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's own tokenizer (with its chat template); pad is set apart from eos."""
    from transformers import AutoTokenizer

    from tuneforge.quiet import hide_transformers_bars

    hide_transformers_bars()  # the first transformers step of every command that loads a model
    source = cfg.tokenizer or resolve_model_path(cfg)
    if Path(source).is_dir() and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
        raise UserError(
            f"{key}: {source} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "set model.tokenizer to a folder or hub id that has them"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise UserError(_load_error(cfg, source, exc)) from None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad must differ from eos, or masking pads would also hide the end-of-turn token.
        for candidate in ("<|endoftext|>", "<|fim_pad|>"):
            candidate_id = tokenizer.convert_tokens_to_ids(candidate)
            if candidate in tokenizer.get_vocab() and candidate_id != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            raise UserError(f"{source}: the tokenizer has no pad token distinct from eos ({tokenizer.eos_token})")
    if not tokenizer.chat_template:
        raise UserError(f"{source}: the tokenizer has no chat_template; tuneforge renders with the model's own")
    return tokenizer


def _gpu() -> str:
    """The current GPU's name and compute capability, for messages."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def _ampere_or_newer() -> bool:
    import torch

    # Not torch.cuda.is_bf16_supported(): it counts bf16 emulated on V100/T4 (slow) as supported.
    return tuple(torch.cuda.get_device_capability()) >= AMPERE


def pick_dtype(name: str) -> torch.dtype:
    """model.dtype as a torch dtype: auto is bf16 on Ampere+ GPUs, fp16 (warned once) on older ones, fp32 on CPU."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if not torch.cuda.is_available():
        return dtypes.get(name, torch.float32)
    if _ampere_or_newer():
        return dtypes.get(name, torch.bfloat16)
    if name == "bf16":
        raise UserError(
            f"model.dtype: bf16 needs an Ampere or newer GPU (compute capability 8.0+, e.g. A100, RTX 3090/4090, "
            f"H100); this is {_gpu()}: set model.dtype: auto (fp16 with loss scaling) or fp16"
        )
    if name == "auto":
        # warnings shows a given message once per process, however often the dtype is picked.
        warnings.warn(f"{_gpu()} has no bf16: training in fp16 with loss scaling; LoRA weights stay fp32", stacklevel=2)
        return torch.float16
    return dtypes[name]


def _flash_attn_problem() -> str | None:
    """Why flash-attn 2 cannot run here, or None when it can."""
    import torch

    if importlib.util.find_spec("flash_attn") is None:
        return "needs the flash-attn package (pip install flash-attn --no-build-isolation)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if not _ampere_or_newer():
        return f"needs an Ampere or newer GPU (compute capability 8.0+); this is {_gpu()}"
    return None


def pick_attn(name: str) -> str:
    """The attention implementation to ask transformers for: auto is flash-attn 2 where it can run, else sdpa."""
    if name in ("sdpa", "eager"):
        return name
    problem = _flash_attn_problem()
    if name == "auto":
        return "sdpa" if problem else "flash_attention_2"
    if problem:
        raise UserError(f"model.attn: flash_attention_2 {problem}; set model.attn: auto or sdpa")
    return name


def load_model_config(cfg: ModelConfig, path: str | None = None) -> PretrainedConfig:
    """The model's config.json from `path` (default: cfg's folder, Hugging Face or ModelScope); missing: UserError."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = path or resolve_model_path(cfg)
    if Path(path).is_dir() and not Path(path, "config.json").is_file():
        raise UserError(
            f"model.name_or_path: {path} has no config.json; point it at a Hugging Face model folder "
            "(config.json, weights, tokenizer) or a hub id"
        )
    try:
        config = AutoConfig.from_pretrained(
            path, revision=cfg.revision, cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise UserError(_load_error(cfg, path, exc)) from None
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return config  # custom modelling code that declares a causal LM
    causal = {name for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for name in ((v,) if isinstance(v, str) else v)}
    # The checkpoint's own architectures say what it is: bert has a causal head class, but a BertForMaskedLM is no LM.
    architectures = getattr(config, "architectures", None) or []
    has_causal_class = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not has_causal_class or (architectures and causal.isdisjoint(architectures)):
        kind = architectures[0] if architectures else f"'{config.model_type}' model"
        raise UserError(
            f"model.name_or_path: {cfg.name_or_path} is a {kind}, not a causal language model; tuneforge fine-tunes "
            "decoder-only LMs such as Qwen/Qwen3-8B"
        )
    return config


def model_skeleton(cfg: ModelConfig) -> PreTrainedModel:
    """The model built from config.json on the meta device: every module, no weights, no memory (for checks)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_model_config(cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)


def save_random_base(cfg: ModelConfig, folder: Path, tokenizer: PreTrainedTokenizerBase, seed: int) -> ModelConfig:
    """Write seeded random weights for cfg's config.json to `folder` (unless there); return the config loading them."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.io import atomic_dir

    if not folder.is_dir():
        config = load_model_config(cfg)
        # A forked generator: the run's own random stream (LoRA init, dropout) is the same whether the base was
        # created here or already existed (a resumed run).
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                config, dtype=pick_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code
            )
        # FileExistsError: another node wrote it first, with the same weights.
        with contextlib.suppress(FileExistsError), atomic_dir(folder, overwrite=False) as tmp:
            _save_on_any_rank(model, tmp)
            tokenizer.save_pretrained(str(tmp))
    return cfg.model_copy(update={"name_or_path": str(folder), "init": "pretrained", "tokenizer": None})


def _save_on_any_rank(model: PreTrainedModel, folder: Path) -> None:
    """model.save_pretrained, on whichever rank calls it.

    transformers 5 writes only on global rank 0 once a process group exists (`should_save_on_this_rank`), but
    each node without shared storage needs its own copy of the random base. Saving through save_pretrained
    keeps its file layout (tied weights under the input embedding's name, which the GGUF converter reads).
    """
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(str(folder))
    finally:
        del model.should_save_on_this_rank


@dataclass(frozen=True)
class DeviceMap:
    """How inference spreads a base too large for one GPU over all of them: from_pretrained's device_map."""

    strategy: str  # one of DEVICE_MAPS
    max_memory: dict[int | str, str] | None = None  # device (GPU index or "cpu") -> the most it may hold

    @classmethod
    def parse(cls, strategy: str | None, max_memory: str | None) -> DeviceMap | None:
        """`--device-map` and `--max-memory 0=20GiB,1=24GiB,cpu=64GiB` as one value (None: one device)."""
        if strategy is None:
            if max_memory is not None:
                raise UserError("--max-memory caps what --device-map places on each device; give --device-map too")
            return None
        if strategy not in DEVICE_MAPS:
            raise UserError(f"--device-map {strategy}: expected one of {', '.join(DEVICE_MAPS)}")
        if max_memory is None:
            return cls(strategy)
        limits: dict[int | str, str] = {}
        for item in max_memory.split(","):
            device, sep, size = (part.strip() for part in item.partition("="))
            if not sep or not size or not (device.isdigit() or device == "cpu"):
                raise UserError(f"--max-memory '{item}': expected DEVICE=SIZE, DEVICE a GPU index or cpu (0=20GiB)")
            limits[int(device) if device.isdigit() else device] = size
        return cls(strategy, limits)

    def kwargs(self) -> dict[str, object]:
        """from_pretrained's arguments; UserError on a machine without the GPUs it names."""
        import torch

        gpus = torch.cuda.device_count()
        if not gpus:
            # accelerate would keep everything on the CPU (or fail on --max-memory's GPU indices): say so instead.
            raise UserError(
                f"--device-map {self.strategy} spreads a model over GPUs and this machine has none; leave it out "
                "(the model runs on the CPU)"
            )
        missing = [str(d) for d in self.max_memory or {} if isinstance(d, int) and d >= gpus]
        if missing:
            raise UserError(f"--max-memory: no GPU {', '.join(missing)} here; this machine has {gpus}, from 0")
        return {"device_map": self.strategy, **({"max_memory": self.max_memory} if self.max_memory else {})}


def load_model(
    cfg: ModelConfig,
    method: MethodConfig | None = None,
    log: Callable = print,
    device: str | None = None,
    device_map: DeviceMap | None = None,
) -> PreTrainedModel:
    """The base causal LM: quantized for qlora, as saved when pre-quantized, else 16-bit (method None: inference).

    `device` places quantized weights (default: this process's GPU, else the CPU); 16-bit ones load on the CPU.
    `device_map` (inference) spreads either kind over every GPU instead.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from tuneforge.model.quant import plan_quantization, quantized_bytes
    from tuneforge.quiet import hide_transformers_bars

    hide_transformers_bars()
    if cfg.init != "pretrained":
        # Training writes random weights to RUN/base first (save_random_base); only a run that never started has none.
        raise UserError(f"model.init: random: no weights to load for {cfg.name_or_path}; train the run first")
    path = resolve_model_path(cfg)
    dtype, attn = pick_dtype(cfg.dtype), pick_attn(cfg.attn)
    if dtype == torch.float16 and method is not None and method.type == "full":
        dtype = torch.float32  # fp16 training keeps fp32 master weights (autocast computes in fp16)
    common = dict(revision=cfg.revision, cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code)
    config = load_model_config(cfg, path)
    quant = plan_quantization(config, cfg, method, dtype, log)
    extra = {} if quant is None else {"device_map": {"": device} if device else _quantized_device_map()}
    if device_map is not None:
        extra.update(device_map.kwargs())
    if quant is not None and quant.config is not None:
        extra["quantization_config"] = quant.config
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, attn_implementation=attn, **extra, **common
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a corrupt or truncated weights file
        raise UserError(_load_error(cfg, path, exc)) from None
    if quant is not None:
        if quant.prequantized:
            _set_compute_dtype(model, dtype)
        log(f"{quant.describe()}: {quantized_bytes(model)}")
    return model


def _quantized_device_map() -> dict[str, int | str]:
    """Where bitsandbytes puts the weights: this process's GPU (one per rank under torchrun), else the CPU."""
    import torch

    return {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else {"": "cpu"}


def _set_compute_dtype(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Compute in model.dtype, not the dtype the checkpoint was saved for (bf16 cannot run on a T4)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = dtype
