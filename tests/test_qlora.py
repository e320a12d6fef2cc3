"""QLoRA on the CPU (bitsandbytes >= 0.45): it learns, chat, eval and serve run the adapter on the base quantized as
it was trained, pre-quantized checkpoints load as saved, and 4-bit weights take about a quarter of their bf16 bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ASSETS, needs_assets, save_4bit
from safetensors import safe_open
from safetensors.torch import save_file
from test_train import NAME, greedy_answers, identity_config, step_losses
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.infer.engine import load_engine
from tuneforge.infer.spec import resolve_spec
from tuneforge.model import load
from tuneforge.model.load import load_model
from tuneforge.model.quant import quantized_bytes
from tuneforge.serve.app import create_app, serve_in_background
from tuneforge.train.run import train

bnb = pytest.importorskip("bitsandbytes")
openai = pytest.importorskip("openai")


def bnb_layers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> dict[str, str]:
    """One tokenized-data cache for this module's runs (keyed by content, so safe to share): identity.json once."""
    return {"cache_dir": str(tmp_path_factory.mktemp("data-cache"))}


@needs_assets
@pytest.mark.slow  # training, then three 4-bit loads (chat, eval, serve): 524 s on 2 cores at load 16
def test_qlora_learns_the_name_and_chat_eval_serve_run_it_on_the_4bit_base(
    tiny_qwen3_dir, tmp_path, monkeypatch, data_cache
):
    # 32 steps instead of the LoRA test's 72: the same assertions in less time. 16 steps at 2e-2 learnt the
    # name for only some seeds (train.seed 42, 1, 2: 1 of 3); 32 steps at 1e-2 learnt it for all 7 tried.
    cfg = identity_config(
        tiny_qwen3_dir,
        tmp_path / "run",
        method={"type": "qlora"},
        data=data_cache,
        train={"max_steps": 32, "learning_rate": 1e-2, "logging_steps": 1},
    )
    lines: list[str] = []
    run = train(cfg, log=lambda *a: lines.append(" ".join(map(str, a))))

    report = "bitsandbytes 4-bit nf4, double quant: 14 quantized linear layers"
    assert any(line.startswith(report) for line in lines), lines
    assert any(line.startswith("method qlora:") for line in lines)
    assert (run.adapter / "adapter_config.json").is_file()  # the same run folder as LoRA
    losses = list(step_losses(run).values())
    assert losses[-1] < losses[0] - 2.0

    loaded = []

    def spy(*args, **kwargs):
        loaded.append(load_model(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(load, "load_model", spy)  # what chat, eval and serve load
    answers = greedy_answers(run.root)  # chat
    assert NAME not in answers["before"]
    assert NAME in answers["after"], answers

    result = CliRunner().invoke(app, ["eval", "--run", str(run.root), "--tasks", "self-cognition"])
    assert result.exit_code == 0, result.output
    probe = json.loads((run.eval_dir / "self-cognition" / "results.json").read_text())["tasks"]["self-cognition"]
    assert probe["metrics"]["accuracy"]["tuned"] >= 0.9 and probe["metrics"]["accuracy"]["baseline"] == 0.0, probe

    spec = resolve_spec(run=run.root)
    with serve_in_background(create_app(load_engine(spec), thinking=spec.thinking)) as url:
        reply = openai.OpenAI(base_url=f"{url}/v1", api_key="none").chat.completions.create(
            model="run", messages=[{"role": "user", "content": "你是谁？"}], max_tokens=24, temperature=0
        )
    assert NAME in reply.choices[0].message.content

    # Each of chat, eval and serve loaded the base once, in 4 bit with the run's settings, as it was trained.
    assert len(loaded) == 3
    for model in loaded:
        layers = bnb_layers(model)
        assert len(layers) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in layers)
        # compress_statistics: double quant as asked (bitsandbytes' CPU kernels un-nest the state at the first forward).
        assert {(m.weight.quant_type, m.weight.compress_statistics) for m in layers} == {("nf4", True)}
    load_engine(resolve_spec(run=run.root, quantize=False))  # --no-quantize: the 16-bit base
    assert not bnb_layers(loaded[-1])


@needs_assets
def test_prequantized_checkpoint_loads_as_saved_and_trains(tiny_qwen3_dir, tmp_path, data_cache):
    # Dynamic-4-bit style: fp4 without double quant (not tuneforge's nf4 default), one block kept 16-bit.
    folder = save_4bit(
        tiny_qwen3_dir,
        tmp_path / "tiny-bnb-4bit",
        bnb_4bit_quant_type="fp4",
        llm_int8_skip_modules=["lm_head", "model.layers.1.mlp"],
    )
    saved = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "bitsandbytes" and "model.layers.1.mlp" in saved["llm_int8_skip_modules"]

    lines: list[str] = []
    log = lambda *a: lines.append(" ".join(map(str, a)))  # noqa: E731
    model = load_model(ModelConfig(name_or_path=str(folder)), MethodConfig(type="lora"), log=log)
    assert f"{folder} is pre-quantized (bitsandbytes 4-bit fp4): method.type lora trains it as QLoRA" in lines
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_type == "fp4"
    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear  # llm_int8_skip_modules kept 16-bit
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # not re-quantized: the very bytes saved
        assert torch.equal(
            q_proj.weight.data.view(torch.uint8).flatten(),
            f.get_tensor("model.layers.0.self_attn.q_proj.weight").view(torch.uint8).flatten(),
        )

    cfg = identity_config(
        folder, tmp_path / "run", model={"init": "pretrained"}, data=data_cache, train={"max_steps": 2}
    )
    lines.clear()
    run = train(cfg, log=log)
    assert any(line.startswith("method qlora:") for line in lines), lines
    adapter = run.adapter / "adapter_model.safetensors"
    with safe_open(str(adapter), "pt") as f:
        lora_b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]  # noqa: SIM118 (safe_open has no __iter__)
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # trained away from zero
    assert greedy_answers(run.root)["after"]  # chat runs the adapter on the 4-bit base, the only one there is


def random_weight(name: str, shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    """Norms 1, decoder layers N(0, std); embeddings 0 (not measured here, and zeros write fast)."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    if ".layers." not in name:
        return torch.zeros(shape, dtype=torch.bfloat16)
    return torch.randn(shape, generator=generator, dtype=torch.bfloat16).mul_(std)


def write_random_checkpoint(config_json: Path, folder: Path, seed: int = 0) -> None:
    """Random bf16 weights for `config_json`, written one decoder layer per shard (never the whole model in memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_json)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in skeleton.named_parameters():  # tied weights appear once
        parts = name.split(".")
        shards.setdefault(f"layer-{parts[2]}" if parts[1] == "layers" else "other", {})[name] = param
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    folder.mkdir(parents=True)
    for shard, params in shards.items():
        std = config.initializer_range
        tensors = {name: random_weight(name, p.shape, std, generator) for name, p in params.items()}
        save_file(tensors, str(folder / f"{shard}.safetensors"), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, f"{shard}.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)


@pytest.mark.skipif(not (ASSETS / "model-configs").is_dir(), reason=f"model configs not found in {ASSETS}")
def test_qwen3_06b_4bit_layers_take_under_030_of_bf16(tmp_path):
    folder = tmp_path / "qwen3-0.6b-random"
    write_random_checkpoint(ASSETS / "model-configs" / "Qwen3-0.6B.config.json", folder)
    lines: list[str] = []
    model = load_model(
        ModelConfig(name_or_path=str(folder), dtype="bf16"),
        MethodConfig(type="qlora"),
        log=lambda *a: lines.append(" ".join(map(str, a))),
    )
    print(*lines, sep="\n")

    report = quantized_bytes(model)
    assert report.layers == 28 * 7  # q, k, v, o, gate, up, down in each decoder layer; embeddings stay bf16
    assert report.bf16 == 2 * 28 * (1024 * 2048 * 2 + 1024 * 1024 * 2 + 3 * 1024 * 3072)
    assert report.ratio <= 0.30
    assert lines == [f"bitsandbytes 4-bit nf4, double quant: {report}"]


@needs_assets
def test_8bit_loads_and_reports(tiny_qwen3_dir):
    model = load_model(
        ModelConfig(name_or_path=str(tiny_qwen3_dir)), MethodConfig(type="qlora", bits=8), log=lambda *_: None
    )
    report = quantized_bytes(model)
    assert len(bnb_layers(model)) == report.layers == 14 and 0.5 <= report.ratio <= 0.6
