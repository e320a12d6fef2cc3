"""`tuneforge env`: what this machine has (library versions, GPUs), which paths a run would take, offline readiness."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

# Distribution names as pip knows them; versions come from installed metadata, without importing the packages.
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "deepspeed",
    "flash-attn",
    "liger-kernel",
    "vllm",
)
MIN_SHM = 1 * 2**30  # DataLoader workers and NCCL pass tensors through /dev/shm; docker's default is 64 MB
TRUE = ("1", "true", "yes", "on")


def versions() -> dict[str, str]:
    """Installed version of each package that matters to training, or 'not installed'."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def gpus() -> list[dict[str, str]]:
    """Each visible CUDA GPU: name, memory, compute capability, native bf16."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(
            {
                "gpu": f"{index}: {props.name}",
                "memory": f"{props.total_memory / 2**30:.1f} GiB",
                "compute capability": f"{props.major}.{props.minor}",
                "bf16": "yes" if (props.major, props.minor) >= (8, 0) else "no (fp16 with loss scaling)",
            }
        )
    return found


def paths() -> dict[str, str]:
    """What a run with the default config (model.attn auto, model.dtype auto, train.loss chunked, qlora) would use."""
    import torch

    from tuneforge.model.load import pick_attn, pick_dtype

    cuda = torch.cuda.is_available()
    liger = importlib.util.find_spec("liger_kernel") is not None
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    return {
        "device": "cuda" if cuda else "cpu",
        "CUDA (torch built for)": torch.version.cuda or "none (CPU build)",
        "dtype (auto)": str(pick_dtype("auto")).removeprefix("torch."),
        "attention (auto)": pick_attn("auto"),
        "loss (chunked)": "Liger fused linear cross-entropy" if cuda and liger else "tuneforge chunked (PyTorch)",
        "qlora": (f"bitsandbytes on {'CUDA' if cuda else 'CPU'}")
        if bnb
        else "unavailable: pip install 'tuneforge[qlora]'",
        "packing": "varlen (flash-attn)" if pick_attn("auto").startswith("flash") else "rows + block-diagonal mask",
    }


def model_problems(model: str) -> list[str]:
    """What a model folder or hub id lacks to load offline: one line each, with the fix."""
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            return [
                f"{model}: not in the Hugging Face cache, so training would download it: run "
                f"`hf download {model}` while online, or pass a local folder"
            ]
        return []
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"{folder}: no config.json; copy the model's config.json into it")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        problems.append(f"{folder}: no tokenizer files; save the tokenizer there (tokenizer.save_pretrained)")
    config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        config.is_file() and "chat_template" in config.read_text(encoding="utf-8")
    )
    if not has_template:
        problems.append(
            f"{folder}: no chat template (chat_template.jinja or tokenizer_config.json); save the "
            "tokenizer of the model's instruct release there"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        problems.append(f"{folder}: no weights (*.safetensors); fine only with model.init: random")
    return problems


def offline_problems(model: str | None = None) -> list[str]:
    """What would make a run reach the network or fail on this machine: one line each, with the fix."""
    problems = []
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in TRUE:
        problems.append("HF_HUB_OFFLINE is not set: export HF_HUB_OFFLINE=1 so a run never tries to download")
    for variable in ("HF_HOME", "HF_HUB_CACHE", "MODELSCOPE_CACHE"):
        value = os.environ.get(variable)
        if value and not Path(value).is_dir():
            problems.append(f"{variable}={value} is not a folder: create it or point {variable} at the cache")
    if model:
        problems += model_problems(model)
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).total < MIN_SHM:
        size = shutil.disk_usage(shm).total / 2**20
        problems.append(
            f"/dev/shm is {size:.0f} MiB: give it more (docker run --shm-size=16g) or set "
            "dataloader workers to 0; NCCL and DataLoader workers pass tensors through it"
        )
    problems += _cuda_problems()
    return problems


def _cuda_problems() -> list[str]:
    import torch

    if torch.version.cuda is None or torch.cuda.is_available():
        return []
    return [
        f"torch is built for CUDA {torch.version.cuda} but no GPU is usable: check `nvidia-smi`; an older "
        "driver than that CUDA needs: update the driver or install the torch build for your CUDA"
    ]
