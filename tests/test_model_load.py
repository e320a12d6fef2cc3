"""Model loading choices and the one-line errors around them: hub sources, dtype and attention per GPU (the
torch.cuda queries monkeypatched, so these run on CPU), optimizers, quantization plans."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import time
import types

import pytest
import torch
import yaml
from conftest import DATA_DIR, TINY_QWEN3, needs_assets
from test_user_errors import one_line_error

from tuneforge.config import Config, MethodConfig, ModelConfig, validate
from tuneforge.errors import UserError
from tuneforge.model.load import load_model, pick_attn, pick_dtype, resolve_model_path
from tuneforge.model.quant import bnb_config, plan_quantization, quantizable_share
from tuneforge.train.run import check_hardware, check_optimizer


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def gpu(monkeypatch, capability: tuple[int, int], name: str) -> None:
    """Pretend a CUDA GPU is present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def installed(monkeypatch, package: str) -> None:
    """Pretend `package` is installed (only importlib.util.find_spec is asked)."""
    module = types.ModuleType(package)
    module.__spec__ = importlib.machinery.ModuleSpec(package, None)
    monkeypatch.setitem(sys.modules, package, module)


def config(**sections) -> Config:
    raw = {
        "model": {"name_or_path": "Qwen/Qwen3-0.6B"},
        "data": {"datasets": [{"path": "d.json"}]},
        "output": {"dir": "out"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


# --- dtype -------------------------------------------------------------------------------------------------------


def test_cpu_dtype_auto_is_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_dtype("auto") == torch.float32 and pick_dtype("bf16") == torch.bfloat16


def test_ampere_picks_bf16(monkeypatch):
    gpu(monkeypatch, (8, 6), "NVIDIA GeForce RTX 3090")
    assert pick_dtype("auto") == torch.bfloat16


def test_gpu_without_bf16_picks_fp16_and_warns(monkeypatch):
    gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.warns(
        UserWarning,
        match=r"Tesla T4 \(compute capability 7.5\) has no bf16: training in fp16 with "
        r"loss scaling; LoRA weights stay fp32",
    ):
        assert pick_dtype("auto") == torch.float16


def test_bf16_on_gpu_without_bf16_is_an_error(monkeypatch):
    gpu(monkeypatch, (7, 0), "Tesla V100-SXM2-32GB")
    with pytest.raises(UserError) as exc:
        pick_dtype("bf16")
    assert one_line(exc).startswith("model.dtype: bf16 needs an Ampere or newer GPU")
    assert "Tesla V100-SXM2-32GB (compute capability 7.0)" in str(exc.value) and "model.dtype: auto" in str(exc.value)


# --- attention ---------------------------------------------------------------------------------------------------


def test_attn_auto_is_sdpa_without_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    assert pick_attn("auto") == "sdpa" and pick_attn("eager") == "eager"


def test_flash_attention_2_without_flash_attn_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed, whatever this machine has
    with pytest.raises(UserError) as exc:
        pick_attn("flash_attention_2")
    assert one_line(exc) == (
        "model.attn: flash_attention_2 needs the flash-attn package "
        "(pip install flash-attn --no-build-isolation); set model.attn: auto or sdpa"
    )


def test_flash_attention_2_where_it_can_run(monkeypatch):
    installed(monkeypatch, "flash_attn")
    gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    assert pick_attn("auto") == pick_attn("flash_attention_2") == "flash_attention_2"


def test_flash_attention_2_on_pre_ampere_gpu(monkeypatch):
    installed(monkeypatch, "flash_attn")
    gpu(monkeypatch, (7, 5), "NVIDIA GeForce RTX 2080")
    assert pick_attn("auto") == "sdpa"
    with pytest.raises(UserError, match=r"needs an Ampere or newer GPU .* RTX 2080 \(compute capability 7.5\)"):
        pick_attn("flash_attention_2")


# --- optimizers --------------------------------------------------------------------------------------------------


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(UserError) as exc:
        config(train={"optim": "adamw_9bit"})
    assert one_line(exc).startswith("config: train.optim: Input should be 'adamw_torch', 'adamw_8bit'")


def test_8bit_optimizer_without_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(UserError) as exc:
        check_optimizer("adamw_8bit")
    assert one_line(exc) == "train.optim: adamw_8bit needs bitsandbytes: pip install 'tuneforge[qlora]'"


def test_paged_optimizer_needs_a_gpu(monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_optimizer("adamw_8bit")  # 8-bit state runs on the CPU too
    with pytest.raises(UserError) as exc:
        check_optimizer("paged_adamw_32bit")
    assert one_line(exc).startswith("train.optim: paged_adamw_32bit pages optimizer state between GPU and CPU")


def test_hardware_problems_are_reported_together(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    gpu(monkeypatch, (7, 5), "Tesla T4")
    cfg = config(
        model={"dtype": "bf16", "attn": "flash_attention_2"},
        method={"type": "qlora"},
        train={"optim": "paged_adamw_8bit"},
    )
    with pytest.raises(UserError) as exc:
        check_hardware(cfg)
    assert [line.split(":")[0] for line in str(exc.value).splitlines()] == [
        "model.dtype",
        "model.attn",
        "train.optim",
        "method.type",
    ]


# --- quantization plans ------------------------------------------------------------------------------------------


def test_unknown_quant_type_is_a_config_error():
    with pytest.raises(UserError) as exc:
        config(method={"type": "qlora", "quant_type": "nf5"})
    assert one_line(exc) == "config: method.quant_type: Input should be 'nf4' or 'fp4' (got 'nf5')"


def test_quant_storage_follows_the_model_dtype():
    # One dtype for packed 4-bit and 16-bit weights is what lets FSDP / ZeRO-3 shard them together.
    pytest.importorskip("bitsandbytes")
    qlora = MethodConfig(type="qlora")
    assert bnb_config(qlora, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16
    assert (
        bnb_config(qlora.model_copy(update={"quant_storage": "uint8"}), torch.bfloat16).bnb_4bit_quant_storage
        == torch.uint8
    )


def tiny_config(model_type: str = "qwen3", **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**TINY_QWEN3, **overrides})


def test_4bit_on_moe_experts_is_refused(tmp_path):
    pytest.importorskip("bitsandbytes")
    # transformers keeps Qwen3-MoE experts as fused 3-D tensors, which bitsandbytes leaves 16-bit.
    tiny_config("qwen3_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UserError) as exc:
        load_model(ModelConfig(name_or_path=str(tmp_path)), MethodConfig(type="qlora"))
    assert one_line(exc).startswith(
        "method.type: qlora: bitsandbytes quantizes linear layers only, which hold 11% "
        "of the weights of model type 'qwen3_moe'"
    )


def test_dense_qwen3_is_almost_all_linear():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        assert quantizable_share(AutoModelForCausalLM.from_config(tiny_config())) > 0.99


def prequantized(method: str, **saved):
    config = tiny_config()
    config.quantization_config = {"quant_method": method, **saved}
    return config


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_prequantized_checkpoint_is_loaded_as_saved(method):
    pytest.importorskip("bitsandbytes")
    lines: list[str] = []
    saved = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    plan = plan_quantization(
        prequantized("bitsandbytes", **saved),
        ModelConfig(name_or_path="unsloth/Qwen3-14B-unsloth-bnb-4bit"),
        MethodConfig(type=method, quant_type="fp4"),
        torch.float32,
        log=lines.append,
    )
    assert plan.prequantized and plan.describe() == "bitsandbytes 4-bit nf4, double quant"
    expected = (
        "method.type lora trains it as QLoRA"
        if method == "lora"
        else "loaded as saved; method.bits, quant_type, double_quant and quant_storage are not applied"
    )
    assert lines == [
        f"unsloth/Qwen3-14B-unsloth-bnb-4bit is pre-quantized (bitsandbytes 4-bit nf4, double quant): {expected}"
    ]


@pytest.mark.parametrize(
    "method, kind, message",
    [
        ("full", "bitsandbytes", "method.type: full cannot train x: its weights are quantized (bitsandbytes)"),
        ("lora", "gptq", "model.name_or_path: x is quantized with gptq; tuneforge trains on bitsandbytes-quantized"),
    ],
)
def test_prequantized_checkpoint_errors(method, kind, message):
    with pytest.raises(UserError) as exc:
        plan_quantization(
            prequantized(kind, load_in_4bit=True),
            ModelConfig(name_or_path="x"),
            MethodConfig(type=method),
            torch.float32,
        )
    assert one_line(exc).startswith(message)


def test_4bit_settings_with_8bit_are_said_to_be_unused():
    pytest.importorskip("bitsandbytes")
    lines: list[str] = []
    plan = plan_quantization(
        tiny_config(),
        ModelConfig(name_or_path="x"),
        MethodConfig(type="qlora", bits=8, quant_type="fp4"),
        torch.float32,
        log=lines.append,
    )
    assert plan.config.load_in_8bit and plan.describe() == "bitsandbytes 8-bit"
    assert lines == ["method.bits: 8 (LLM.int8): 4-bit settings not used: method.quant_type"]


def test_plain_lora_and_inference_quantize_nothing():
    for method in (None, MethodConfig(type="lora"), MethodConfig(type="full")):
        assert plan_quantization(tiny_config(), ModelConfig(name_or_path="x"), method, torch.float32) is None


# --- sources -----------------------------------------------------------------------------------------------------


@needs_assets
def test_missing_hub_id_fails_fast_naming_the_source(tmp_path):
    cfg = {
        "model": {"name_or_path": "nobody-7f3a/no-such-model"},
        "data": {"datasets": [{"path": str(DATA_DIR / "identity.json")}]},
        "output": {"dir": str(tmp_path / "o")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    command = ["data", "render", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o.jsonl")]
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = one_line_error(result)
    assert time.monotonic() - start < 60
    assert line.startswith(
        "error: model.name_or_path: 'nobody-7f3a/no-such-model' is not a local folder and could "
        "not be fetched from huggingface (https://huggingface.co, offline: HF_HUB_OFFLINE is set"
    )
    assert line.endswith(
        "Check the id and model.revision, the network (or HF_ENDPOINT, HF_HUB_OFFLINE), or set model.hub: modelscope"
    )


def test_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(UserError) as exc:
        resolve_model_path(ModelConfig(name_or_path=str(tmp_path / "qwen3")))
    assert (
        one_line(exc) == f"model.name_or_path: {tmp_path / 'qwen3'}: not found; expected a model folder "
        "or an org/name hub id"
    )


def fake_modelscope(monkeypatch, snapshot_download) -> None:
    module = types.ModuleType("modelscope")
    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", module)


def test_modelscope_download_passes_revision_and_cache(monkeypatch, tmp_path):
    calls = []
    fake_modelscope(monkeypatch, lambda *a, **k: calls.append((a, k)) or str(tmp_path))
    cfg = ModelConfig(name_or_path="Qwen/Qwen3-8B", hub="modelscope", revision="v1.0", cache_dir=str(tmp_path))
    assert resolve_model_path(cfg) == str(tmp_path)
    assert calls == [(("Qwen/Qwen3-8B",), {"revision": "v1.0", "cache_dir": str(tmp_path)})]


def test_missing_modelscope_id(monkeypatch):
    def not_found(*_, **__):
        raise ValueError("The model: nobody/none at revision master does not exist\nmore detail")

    fake_modelscope(monkeypatch, not_found)
    with pytest.raises(UserError) as exc:
        resolve_model_path(ModelConfig(name_or_path="nobody/none", hub="modelscope"))
    assert one_line(exc) == (
        "model.name_or_path: 'nobody/none' is not a local folder and could not be fetched from modelscope "
        "(https://modelscope.cn): The model: nobody/none at revision master does not exist. Check the id and "
        "model.revision, the network (or HF_ENDPOINT, HF_HUB_OFFLINE), or set model.hub: huggingface"
    )


def test_modelscope_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(UserError) as exc:
        resolve_model_path(ModelConfig(name_or_path="Qwen/Qwen3-8B", hub="modelscope"))
    assert one_line(exc) == "model.hub: modelscope needs the modelscope package: pip install 'tuneforge[modelscope]'"


@needs_assets
def test_full_fine_tuning_on_fp16_gpu_keeps_fp32_weights(monkeypatch, tiny_qwen3_dir):
    # GradScaler cannot unscale fp16 gradients: full fine-tuning autocasts to fp16 over fp32 master weights.
    gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.warns(UserWarning, match="training in fp16"):
        model = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), MethodConfig(type="full"))
        lora_base = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), MethodConfig(type="lora"))
    assert model.dtype == torch.float32 and lora_base.dtype == torch.float16


def test_random_base_is_written_on_a_rank_other_than_0(tiny_qwen3_dir, qwen3_tokenizer, tmp_path, monkeypatch):
    # Node 1 of a multi-node run without shared storage writes its own copy; transformers' save_pretrained
    # would write nothing there (it saves on global rank 0 only), leaving a base that cannot load.
    from transformers.distributed import mixin

    from tuneforge.model.load import save_random_base

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    cfg = ModelConfig(name_or_path=str(tiny_qwen3_dir), init="random", dtype="fp32")
    loaded = {}
    for name in ("a", "b"):
        written = save_random_base(cfg, tmp_path / name, qwen3_tokenizer, seed=7)
        loaded[name] = load_model(written, log=lambda *_: None).state_dict()
    assert loaded["a"].keys() == loaded["b"].keys() and len(loaded["a"]) > 0
    assert all(torch.equal(loaded["a"][k], loaded["b"][k]) for k in loaded["a"])  # seeded: every node alike
    base = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), log=lambda *_: None).state_dict()
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], loaded["a"]["model.layers.0.mlp.up_proj.weight"])
