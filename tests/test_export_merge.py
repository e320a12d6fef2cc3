"""merge: a LoRA run folder becomes a plain model whose logits are the adapter's; bad input fails in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_tiny_qwen3, save_4bit
from tiny_adapter import make_tiny_adapter
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import Config, DataConfig, DatasetConfig, MethodConfig, ModelConfig, OutputConfig, save_config
from tuneforge.errors import UserError
from tuneforge.export.merge import merge_adapter, run_sources
from tuneforge.rundir import Run

PROMPT = "<|im_start|>user\n用一句话介绍 Python.<|im_end|>\n<|im_start|>assistant\n"


def make_lora_run(run: Path, base_dir: Path, seed: int = 0, method: MethodConfig | None = None) -> Path:
    """A finished LoRA (or QLoRA) run folder as training leaves it: config.yaml, adapter/ with the tokenizer."""
    make_tiny_adapter(base_dir, run / "adapter", seed=seed)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base_dir / name, run / "adapter" / name)
    return write_run_config(run, base_dir, method)


def write_run_config(run: Path, base_dir: Path, method: MethodConfig | None = None) -> Path:
    """RUN/config.yaml for a run of `base_dir`, as training writes it."""
    config = Config(
        model=ModelConfig(name_or_path=str(base_dir)),
        method=method or MethodConfig(),
        data=DataConfig(datasets=[DatasetConfig(path="train.jsonl")]),
        output=OutputConfig(dir=str(run)),
    )
    save_config(config, run / "config.yaml")
    return run


def logits(model, tokenizer, text: str = PROMPT):
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def error_line(result) -> str:
    """The CLI's error: exactly one line, the last thing printed (progress bars may come before it)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_qwen3_dir) -> Path:
    return make_lora_run(tmp_path_factory.mktemp("lora-run"), tiny_qwen3_dir)


@pytest.fixture(scope="module")
def merged_fp32(tmp_path_factory, lora_run):
    base, adapter = run_sources(lora_run)
    out = tmp_path_factory.mktemp("merged") / "model"
    return merge_adapter(base, adapter, out, dtype="fp32")


def test_merged_logits_equal_adapter_logits(merged_fp32, lora_run, tiny_qwen3_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_fp32.out)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype="float32").eval()
    base_logits = logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_fp32.out).eval()

    adapter_logits = logits(adapted, tokenizer)
    assert (adapter_logits - base_logits).abs().max() > 0.1  # the adapter really changes the model
    assert (logits(merged, tokenizer) - adapter_logits).abs().max() < 1e-4
    assert merged_fp32.max_logit_diff < 1e-4
    assert merged.dtype.is_floating_point and str(merged.dtype) == "torch.float32"


def test_merged_folder_is_self_contained(merged_fp32):
    out = merged_fp32.out
    assert (out / "model.safetensors").is_file() and not list(out.glob("adapter_*"))
    assert (out / "tokenizer.json").is_file()
    assert "<think>" in (out / "chat_template.jinja").read_text()
    generation = json.loads((out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert 151645 in (eos if isinstance(eos, list) else [eos])  # <|im_end|>: generation stops at the turn's end
    assert generation["pad_token_id"] == 151643
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary folders left


def test_merge_cli_run_defaults_to_bf16_in_run_folder(lora_run):
    result = CliRunner().invoke(app, ["merge", "--run", str(lora_run)])
    assert result.exit_code == 0, result.output
    assert "largest logit difference from the adapter's own outputs on 3 chat prompts" in result.stdout
    assert json.loads((lora_run / "merged" / "config.json").read_text())["dtype"] == "bfloat16"

    again = CliRunner().invoke(app, ["merge", "--run", str(lora_run)])
    assert "merged already exists; pass --force to replace it" in error_line(again)


@pytest.mark.parametrize("overrides", [{"hidden_size": 96}, {"num_hidden_layers": 1}], ids=["wider", "shallower"])
def test_adapter_for_a_different_base_is_refused(tmp_path, lora_run, overrides):
    other = make_tiny_qwen3(tmp_path / "other-base", **overrides)
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        app, ["merge", "--model", str(other), "--adapter", str(lora_run / "adapter"), "--out", str(out)]
    )
    line = error_line(result)
    assert "this adapter was trained for a different base" in line and "model.layers." in line
    assert not out.exists()


def test_existing_output_needs_force(tmp_path, lora_run):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    base, adapter = run_sources(lora_run)
    with pytest.raises(UserError, match="already exists; pass --force"):
        merge_adapter(base, adapter, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_merge_leaves_nothing(tmp_path, lora_run, monkeypatch):
    from transformers import PreTrainedModel

    def interrupted_save(self, folder, **kwargs):
        (Path(folder) / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted_save)
    base, adapter = run_sources(lora_run)
    with pytest.raises(UserError, match="interrupted; nothing was written") as err:
        merge_adapter(base, adapter, tmp_path / "merged")
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_full_fine_tune_run_has_nothing_to_merge(tmp_path, tiny_qwen3_dir):
    run = write_run_config(tmp_path / "full-run", tiny_qwen3_dir)
    (run / "model").mkdir()
    with pytest.raises(UserError, match="is a full fine-tune"):
        run_sources(run)


# --- QLoRA: the adapter trained on quantized weights; both merges are measured, the chosen one is written ---


def quantized_adapter_logits(base_dir: Path, adapter: Path, tokenizer, **quant):
    """Logits of `adapter` on `base_dir` quantized by transformers + bitsandbytes itself (fp32 compute).

    In train mode, as in training: eval mode would run bitsandbytes' bf16 kernel on AVX-512 BF16 CPUs.
    The adapter and the model have no dropout, so train mode is deterministic.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, **quant)
    base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=config, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, adapter).train(), tokenizer)


def repack_4bit_layers(model) -> None:
    """What a first eval-mode no-grad CPU forward does to 4-bit layers under bitsandbytes 0.49-0.50 on an AVX-512 BF16
    CPU (issue 11): that forward where this CPU has AVX-512 BF16, the same repack done directly where it has not."""
    import bitsandbytes as bnb
    import torch

    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert layers
    if bnb.functional.has_avx512bf16():
        for module in layers:
            module.support_avx512bf16_for_cpu = True  # bitsandbytes' own default, which the merge turns off
        with torch.no_grad():
            model.eval()(torch.tensor([[151644, 872, 198]]))
    for module in layers:
        if not getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            weight = module.weight
            weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
                weight.data, weight.quant_state
            )
    assert all(module.weight.quant_state.packing_format_for_cpu for module in layers)


@pytest.fixture
def forward_first(monkeypatch):
    """Every forward the merge runs on the quantized model is followed by a repacking CPU forward."""
    import bitsandbytes as bnb

    from tuneforge.export import merge

    real = merge._logits
    calls = []

    def logits_then_repack(model, prompts):
        out = real(model, prompts)
        if any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules()):
            repack_4bit_layers(model)
            calls.append(model)
        return out

    monkeypatch.setattr(merge, "_logits", logits_then_repack)
    yield calls
    assert calls, "the merge ran no forward on the quantized model"


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_qwen3_dir) -> Path:
    # fp4 without double quant: not the defaults, so the test sees that the run's own settings are used.
    method = MethodConfig(type="qlora", quant_type="fp4", double_quant=False)
    return make_lora_run(tmp_path_factory.mktemp("qlora-run"), tiny_qwen3_dir, seed=1, method=method)


@pytest.mark.parametrize("onto", ["16bit", "dequantized"])
def test_qlora_merge_reports_both_bases_and_writes_the_chosen(tmp_path, qlora_run, tiny_qwen3_dir, onto, forward_first):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = run_sources(qlora_run)
    method = Run.open(qlora_run).cfg.method  # fp4: the run's own quantization, not the defaults
    report = merge_adapter(
        base, adapter, tmp_path / "merged", dtype="fp32", onto=onto, log=lambda *_: None, method=method
    )
    assert report.onto == onto and list(report.diffs) == ["16bit", "dequantized"]
    # Merged onto the dequantized weights, the model computes what the adapter computed in training.
    assert report.diffs["dequantized"] < 1e-4
    assert report.diffs["16bit"] > 100 * max(report.diffs["dequantized"], 1e-6)  # quantization error, undone
    assert f"--onto {onto} {report.diffs[onto]:.3g} (written)" in report.summary()

    tokenizer = AutoTokenizer.from_pretrained(report.out)
    merged = AutoModelForCausalLM.from_pretrained(report.out).eval()
    assert "quantization_config" not in json.loads((report.out / "config.json").read_text())
    if onto == "dequantized":  # checked against bitsandbytes' own quantization with the run's settings
        want = quantized_adapter_logits(tiny_qwen3_dir, adapter, tokenizer, bnb_4bit_quant_type="fp4")
    else:
        base_model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype="float32")
        want = logits(PeftModel.from_pretrained(base_model, adapter).eval(), tokenizer)
    assert (logits(merged, tokenizer) - want).abs().max() < 1e-4


def test_prequantized_base_merges_onto_its_dequantized_weights(tmp_path, tiny_qwen3_dir, forward_first):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = save_4bit(tiny_qwen3_dir, tmp_path / "tiny-bnb-4bit", bnb_4bit_quant_type="nf4")
    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path / "adapter", seed=2)
    cli = ["merge", "--model", str(base_dir), "--adapter", str(adapter), "--dtype", "fp32"]

    refused = CliRunner().invoke(app, [*cli, "--out", str(tmp_path / "m16"), "--onto", "16bit"])
    assert "is pre-quantized and has no 16-bit weights; use --onto dequantized" in error_line(refused)
    assert not (tmp_path / "m16").exists()

    result = CliRunner().invoke(app, [*cli, "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert "--onto dequantized" in result.stdout and "(written)" in result.stdout
    assert "--onto 16bit" not in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    want = quantized_adapter_logits(tiny_qwen3_dir, adapter, tokenizer, bnb_4bit_quant_type="nf4")
    assert (logits(merged, tokenizer) - want).abs().max() < 1e-4


def test_standalone_adapter_onto_dequantized_assumes_qlora_defaults(tmp_path, tiny_qwen3_dir, forward_first):
    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path / "my-adapter", seed=3)
    lines: list[str] = []
    report = merge_adapter(
        ModelConfig(name_or_path=str(tiny_qwen3_dir)),
        adapter,
        tmp_path / "merged",
        dtype="fp32",
        onto="dequantized",
        log=lines.append,
    )
    assert any(
        "quantizing the base as method.type: qlora does by default (4-bit nf4, double quant True)" in line
        for line in lines
    ), lines
    assert report.onto == "dequantized" and report.diffs["dequantized"] < 1e-4


def test_lora_adapter_cannot_merge_onto_dequantized(tmp_path, lora_run):
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", "--run", str(lora_run), "--out", str(out), "--onto", "dequantized"])
    assert "was trained on a 16-bit base (LoRA, not QLoRA)" in error_line(result)
    assert not out.exists()


def test_export_run_passes_the_choice_to_its_merge(tmp_path, qlora_run, forward_first):
    run = tmp_path / "run"
    shutil.copytree(qlora_run, run)
    result = CliRunner().invoke(
        app, ["export", "--run", str(run), "--to", "gguf", "--type", "f32", "--onto", "dequantized"]
    )
    assert result.exit_code == 0, result.output
    assert "--onto dequantized" in result.stdout and "(written)" in result.stdout.split("--onto dequantized")[1]
    assert (run / "gguf" / "run-f32.gguf").is_file()


def test_qlora_run_on_a_prequantized_base_merges_onto_its_dequantized_weights(tmp_path, tiny_qwen3_dir, forward_first):
    # The run said method.type: qlora, but the checkpoint itself was 4-bit: there is no 16-bit base to load.
    base_dir = save_4bit(tiny_qwen3_dir, tmp_path / "tiny-bnb-4bit", bnb_4bit_quant_type="nf4")
    run = tmp_path / "run"
    make_tiny_adapter(tiny_qwen3_dir, run / "adapter", seed=4)
    write_run_config(run, base_dir, MethodConfig(type="qlora"))
    base, adapter = run_sources(run)
    with pytest.raises(UserError, match="is pre-quantized and has no 16-bit weights"):
        merge_adapter(base, adapter, tmp_path / "m16", dtype="fp32", onto="16bit", log=lambda *_: None)
    report = merge_adapter(base, adapter, tmp_path / "merged", dtype="fp32", log=lambda *_: None)
    assert report.onto == "dequantized" and list(report.diffs) == ["dequantized"]
    assert report.diffs["dequantized"] < 1e-4


def corrupt_projections(model, how: str) -> None:
    """Permute (the wrong layout: right values in the wrong places) or add 1 % noise to every projection weight."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight"):
                if how == "permuted":
                    param.copy_(param.flatten()[torch.randperm(param.numel(), generator=generator)].view_as(param))
                else:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.01 * param.abs().mean())


@pytest.mark.parametrize("how", ["permuted", "noisy"])
def test_corrupted_dequantization_is_refused_and_writes_nothing(tmp_path, qlora_run, monkeypatch, how):
    from transformers import PreTrainedModel

    real = PreTrainedModel.dequantize

    def corrupted(self, *args, **kwargs):
        model = real(self, *args, **kwargs)
        corrupt_projections(model, how)
        return model

    monkeypatch.setattr(PreTrainedModel, "dequantize", corrupted)
    out = tmp_path / "merged"
    cli = ["merge", "--run", str(qlora_run), "--out", str(out), "--onto", "dequantized", "--dtype", "fp32"]
    line = error_line(CliRunner().invoke(app, cli))
    assert line.startswith("error: --onto dequantized --dtype fp32: the merged model's logits are "), line
    assert "from the adapter's own outputs (bound " in line and "x the largest logit)" in line
    assert "so the merge is wrong and nothing was written; try --onto 16bit, and report it" in line
    assert os.listdir(tmp_path) == []  # no final folder, no temporary one


def test_corrupted_16bit_merge_is_refused_and_writes_nothing(tmp_path, qlora_run, monkeypatch):
    # The 16-bit merge is checked against the adapter unmerged on the same 16-bit weights.
    from peft.tuners.tuners_utils import BaseTuner

    real = BaseTuner.merge_and_unload

    def corrupted(self, *args, **kwargs):
        model = real(self, *args, **kwargs)
        corrupt_projections(model, "noisy")
        return model

    monkeypatch.setattr(BaseTuner, "merge_and_unload", corrupted)
    cli = ["merge", "--run", str(qlora_run), "--out", str(tmp_path / "merged"), "--dtype", "fp32"]
    line = error_line(CliRunner().invoke(app, cli))
    assert line.startswith("error: --onto 16bit --dtype fp32: the merged model's logits are "), line
    assert "from the adapter's outputs on the same 16-bit weights" in line and "try --onto dequantized" in line
    assert os.listdir(tmp_path) == []
