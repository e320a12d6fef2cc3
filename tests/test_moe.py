"""LoRA on a tiny random Qwen3-MoE: it learns on real data training the attention only, merges to the adapter's
logits, exports to a qwen3moe GGUF that llama.cpp runs as transformers does, and the server answers with it."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_qwen3, needs_assets
from test_export_gguf import hf_greedy, llama_cpp_greedy
from test_export_merge import logits
from test_train import identity_config, step_losses

from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.errors import UserError
from tuneforge.estimate.memory import Job, Shape, estimate
from tuneforge.export.gguf import export_gguf
from tuneforge.export.merge import merge_adapter, run_sources
from tuneforge.model.adapters import check_method
from tuneforge.train.run import train

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
LOGIT_TOL = 0.02  # f16 GGUF against fp32 transformers, as for the dense export


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-moe"), moe=True)


@pytest.fixture(scope="module")
def moe_run(moe_base, tmp_path_factory):
    """16 LoRA steps of the self-cognition data on the tiny MoE (about 110 s on 2 busy cores)."""
    out = tmp_path_factory.mktemp("moe-run") / "run"
    lines: list[str] = []
    # init pretrained: the adapter is trained on moe_base's own weights, which the merge test loads.
    cfg = identity_config(moe_base, out, model={"init": "pretrained"}, train={"max_steps": 16, "logging_steps": 1})
    return train(cfg, log=lambda *a: lines.append(" ".join(map(str, a)))), cfg, lines


@pytest.fixture(scope="module")
def moe_merged(moe_run, tmp_path_factory):
    run, _, _ = moe_run
    return merge_adapter(*run_sources(run.root), tmp_path_factory.mktemp("moe-merged") / "model", dtype="fp32").out


@needs_assets
@pytest.mark.slow  # the training fixture: 16 steps
def test_lora_on_a_moe_learns_and_trains_the_attention_only(moe_run, moe_base):
    run, cfg, lines = moe_run
    losses = list(step_losses(run).values())
    assert len(losses) == 16 and losses[-1] < losses[0] - 2.0  # measured 12.88 -> 8.24
    adapter_config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == ATTENTION
    assert not adapter_config.get("target_parameters")  # peft's own all-linear would add experts and router
    from safetensors import safe_open

    with safe_open(run.adapter / "adapter_model.safetensors", "pt") as f:
        layers = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in f.keys()}  # noqa: SIM118
    assert layers == ATTENTION
    # The trainable count train reports is the one the estimator prices (LoRA weights: 4 bytes each).
    shape = Shape.from_config(json.loads((moe_base / "config.json").read_text()))
    lora_params = estimate(Job.from_config(cfg, shape)).parts["LoRA weights"] // 4
    assert any(line.startswith(f"method lora: {lora_params:,} trainable parameters") for line in lines), lines


@needs_assets
@pytest.mark.slow
def test_merged_moe_logits_equal_the_adapter_logits(moe_run, moe_merged, moe_base, qwen3_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _, _ = moe_run
    base = AutoModelForCausalLM.from_pretrained(moe_base, dtype="float32").eval()
    base_logits = logits(base, qwen3_tokenizer)
    adapted = PeftModel.from_pretrained(base, run.adapter).eval()
    adapter_logits = logits(adapted, qwen3_tokenizer)
    assert (adapter_logits - base_logits).abs().max() > 0.1  # the adapter really changes the model
    merged = AutoModelForCausalLM.from_pretrained(moe_merged, dtype="float32").eval()
    assert type(merged).__name__ == "Qwen3MoeForCausalLM"
    assert (logits(merged, qwen3_tokenizer) - adapter_logits).abs().max() < 1e-4


@needs_assets
@pytest.mark.slow
def test_moe_gguf_runs_in_llama_cpp_as_in_transformers(moe_merged, qwen3_tokenizer):
    from tuneforge.export.gguf import read_metadata

    gguf_file = export_gguf(moe_merged, moe_merged.parent / "moe-f16.gguf", "f16")
    meta = read_metadata(gguf_file, ["general.architecture", "qwen3moe.expert_count", "qwen3moe.expert_used_count"])
    assert meta == {"general.architecture": "qwen3moe", "qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 2}
    messages = [{"role": "user", "content": "用一句话介绍 Python."}]
    ids = qwen3_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    hf_ids, hf_logits, min_gap = hf_greedy(moe_merged, ids, steps=8)
    cpp_ids, cpp_logits = llama_cpp_greedy(gguf_file, ids, steps=8)
    assert abs(cpp_logits - hf_logits).max() < LOGIT_TOL
    assert min_gap > 2 * LOGIT_TOL, f"test setup: margin {min_gap:.4f}; no flip is possible only above it"
    assert cpp_ids[len(ids) :] == hf_ids[len(ids) :]


@needs_assets
@pytest.mark.slow
def test_the_server_answers_with_the_moe_run_as_its_merged_model_generates(moe_run, moe_merged, qwen3_tokenizer):
    import httpx
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.serve.app import create_app, serve_in_background

    run, _, _ = moe_run
    messages = [{"role": "user", "content": "你是谁？"}]
    engine = load_engine(resolve_spec(run=run.root))
    with serve_in_background(create_app(engine)) as url:
        body = {"model": run.name, "messages": messages, "max_tokens": 8, "temperature": 0,
                "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    ids = qwen3_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False, tokenize=True, return_tensors="pt"
    )["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(moe_merged, dtype="float32").eval()
    with torch.no_grad():
        out = merged.generate(ids, max_new_tokens=8, do_sample=False)
    want = qwen3_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert reply.json()["choices"][0]["message"]["content"] == want
    assert reply.json()["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize("targets", [["gate_proj"], ["experts"], "mlp.gate"])
def test_lora_on_experts_or_router_is_refused_in_one_line(moe_base, targets):
    with pytest.raises(UserError) as refused:
        check_method(ModelConfig(name_or_path=str(moe_base)), MethodConfig(target_modules=targets))
    message = str(refused.value)
    assert message.startswith("method.target_modules: ") and "\n" not in message
    assert message.endswith(
        "matches no linear layer of Qwen3MoeForCausalLM; its linear layers are k_proj, lm_head, o_proj, q_proj, v_proj "
        "(a mixture of experts: LoRA trains its attention only) (or use all-linear)"
    )


def test_estimate_reads_experts_from_a_transformers_5_moe_config(moe_base):
    saved = json.loads((moe_base / "config.json").read_text())
    assert "num_local_experts" in saved and "num_experts" not in saved  # what transformers 5 writes
    shape = Shape.from_config(saved)
    assert shape.experts is not None and (shape.experts.count, shape.experts.active) == (4, 2)
    assert set(shape.linears()) == {"q_proj", "k_proj", "v_proj", "o_proj"}
