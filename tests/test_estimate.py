"""tuneforge estimate: the step count against the real Trainer, the memory model's terms, the train pre-flight."""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import subprocess
import sys

import pytest
import yaml
from conftest import ASSETS, DATA_DIR, ROOT, needs_assets

from tuneforge.config import validate
from tuneforge.errors import UserError
from tuneforge.estimate.memory import GIB, Job, Shape, estimate
from tuneforge.estimate.shapes import PUBLISHED_SHAPES, QWEN3_SHAPES
from tuneforge.estimate.steps import count_steps

QWEN3_8B = Shape(
    vocab=151936, hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, tied=False
)


def _raw(tmp_path, model_dir, data: dict, train: dict) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "init": "random"},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "N", "author": "A"}}],
            "cache_dir": str(tmp_path / "cache"),
            **data,
        },
        "train": train,
        "output": {"dir": str(tmp_path / "run")},
    }


def _trainer_max_steps(cfg, dataset, model, tmp_path, world_size: int) -> tuple[int, int]:
    """(steps per epoch, max_steps) as transformers' Trainer computes them for this dataset on `world_size` ranks."""
    from accelerate.data_loader import prepare_data_loader

    from tuneforge.rundir import Run
    from tuneforge.train.run import training_arguments
    from tuneforge.train.trainer import SFTTrainer

    args = training_arguments(cfg, Run(tmp_path / "run"), has_eval=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=lambda rows: rows)
    loader = trainer.get_train_dataloader()
    if world_size > 1:  # what accelerate gives rank 0 of `world_size` processes (even batches, as the Trainer asks)
        loader = prepare_data_loader(
            loader.base_dataloader, num_processes=world_size, process_index=0, put_on_device=False, even_batches=True
        )
    values = trainer.set_initial_training_values(args, loader)
    return values[1], values[-1]


@pytest.fixture(scope="module")
def bare_model():
    """A 2-layer Qwen3 the Trainer can hold (never run: only the step arithmetic is tested)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=64,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
        )
    )


@needs_assets
def test_step_count_equals_the_trainers_max_steps_on_50_random_configs(tmp_path, bare_model, qwen3_tokenizer):
    from tuneforge.data.prepare import prepare
    from tuneforge.objective import SFT

    rng = random.Random(16)
    # Data settings that change the prepared set: validation split, max_samples, over-long samples dropped.
    data_variants = [
        {"val_size": 0.0},
        {"val_size": 0.1},
        {"val_size": 7, "max_length": 96},
        {"max_length": 80, "packing": False},
        {"val_size": 0.25, "datasets_max": 37},
    ]
    prepared = {}
    checked = set()
    for _ in range(50):
        variant = rng.randrange(len(data_variants))
        data = dict(data_variants[variant])
        max_samples = data.pop("datasets_max", None)
        train = {"per_device_batch_size": rng.randint(1, 8), "gradient_accumulation": rng.randint(1, 16)}
        if rng.random() < 0.3:
            train["max_steps"] = rng.randint(1, 200)
        else:
            train["epochs"] = rng.choice([0.3, 0.5, 1, 1.5, 2, 3, 2.7])
        raw = _raw(tmp_path, "unused", data, train)
        if max_samples:
            raw["data"]["datasets"][0]["max_samples"] = max_samples
        raw["data"]["group_by_length"] = rng.random() < 0.5
        cfg = validate(raw)
        if variant not in prepared:
            prepared[variant] = prepare(cfg.data, qwen3_tokenizer, log=lambda *_: None, objective=SFT).train
        world = rng.choice([1, 1, 2, 3, 4, 8])
        plan = count_steps(len(prepared[variant]), cfg.train, world)
        per_epoch, max_steps = _trainer_max_steps(cfg, prepared[variant], bare_model, tmp_path, world)
        assert (plan.steps_per_epoch, plan.total_steps) == (per_epoch, max_steps), (cfg.train, world)
        checked.add(len(prepared[variant]))
    assert len(checked) == len(data_variants)  # five different prepared sizes took part
    assert checked == {len(x) for x in prepared.values()}


def test_step_count_rounds_a_short_accumulation_group_up():
    train = validate(
        {
            "model": {"name_or_path": "x"},
            "data": {"datasets": [{"path": "x"}]},
            "output": {"dir": "x"},
            "train": {"per_device_batch_size": 2, "gradient_accumulation": 4, "epochs": 1.5},
        }
    ).train
    plan = count_steps(100, train, world_size=3)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (17, 5, 8)
    assert plan.global_batch == 24


def _job(**sections) -> Job:
    raw = {
        "model": {"name_or_path": "Qwen/Qwen3-8B"},
        "data": {"datasets": [{"path": "x"}], "max_length": 2048},
        "output": {"dir": "x"},
        **sections,
    }
    return Job.from_config(validate(raw), QWEN3_8B)


def test_offline_qwen3_shapes_give_the_model_cards_parameter_counts():
    # Qwen's model cards: total and non-embedding parameters (tied embeddings counted once).
    cards = {"0.6B": (0.6, 0.44), "1.7B": (1.7, 1.4), "8B": (8.2, 6.95)}
    for size, (total, body) in cards.items():
        shape = Shape.from_config(QWEN3_SHAPES[f"Qwen/Qwen3-{size}"])
        embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        assert round(shape.params / 1e9, len(str(total).split(".")[1])) == total
        assert round((shape.params - embeddings) / 1e9, len(str(body).split(".")[1])) == body


@pytest.mark.skipif(
    not (ASSETS / "model-configs").is_dir(), reason=f"no model-configs under {ASSETS} (../shared/assets)"
)
def test_offline_qwen3_shapes_equal_the_published_config_json():
    for size in ("0.6B", "8B"):
        published = json.loads((ASSETS / "model-configs" / f"Qwen3-{size}.config.json").read_text())
        ours = QWEN3_SHAPES[f"Qwen/Qwen3-{size}"]
        assert ours == {key: published[key] for key in ours}


def test_memory_terms_follow_the_method():
    lora, qlora, full = (estimate(_job(method={"type": t})) for t in ("lora", "qlora", "full"))
    params = QWEN3_8B.params
    assert params == 8_190_735_360  # Qwen3-8B's published parameter count
    assert lora.parts["weights"] == 2 * params  # bf16
    # nf4 + double quant: 0.5 byte plus 1/64 + 4/(64·256) per linear weight; embeddings and head stay bf16.
    linear = QWEN3_8B.linear_params
    assert qlora.parts["weights"] == pytest.approx(linear * (0.5 + 1 / 64 + 4 / 16384) + 2 * (params - linear))
    rank8 = 36 * 8 * sum(i + o for i, o in QWEN3_8B.linears().values())
    assert lora.parts["LoRA weights"] == 4 * rank8 and lora.parts["gradients"] == 4 * rank8
    assert lora.parts["optimizer state"] == 8 * rank8  # AdamW: two fp32 moments
    assert full.parts["gradients"] == 2 * params and full.parts["optimizer state"] == 4 * params
    assert full.parts["logits / loss"] > lora.parts["logits / loss"] + 4 * 151936 * 4096 - 1  # lm_head's fp32 grad


def test_checkpointing_chunked_loss_and_sharding_shrink_what_they_should():
    base = _job(train={"per_device_batch_size": 4})
    ckpt = _job(train={"per_device_batch_size": 4, "gradient_checkpointing": True})
    standard = _job(train={"per_device_batch_size": 4, "loss": "standard"})
    assert estimate(ckpt).parts["activations"] < estimate(base).parts["activations"] / 5
    # Full logits of 8,192 tokens × 151,936 in bf16 plus three fp32 copies: 15.8 GiB; one chunk instead: < 1 GiB.
    assert estimate(standard).parts["logits / loss"] / GIB == pytest.approx(8192 * 151936 * 14 / GIB, rel=1e-6)
    assert estimate(base).parts["logits / loss"] < GIB
    full = {"method": {"type": "full"}}
    ddp = estimate(_job(**full, distributed={"nproc": 4}))
    zero3 = estimate(_job(**full, distributed={"nproc": 4, "strategy": "deepspeed", "deepspeed": "zero3"}))
    offload = estimate(_job(**full, distributed={"nproc": 4, "strategy": "deepspeed", "deepspeed": "zero3_offload"}))
    assert zero3.parts["weights"] < ddp.parts["weights"] / 3
    assert offload.parts["optimizer state"] == 0 and offload.offloaded > zero3.parts["optimizer state"]


def test_peak_holds_activations_or_gradients_and_step_temporaries_not_both():
    # Measured on Qwen3-0.6B full fine-tuning (docs/performance.md): summing every term was 12 % high; backward frees
    # the activations as it makes the gradients, and the optimizer step comes after.
    full = estimate(_job(method={"type": "full"}, train={"gradient_checkpointing": True}))
    p = full.parts
    assert p["optimizer step"] == 2 * QWEN3_8B.params  # a GPU: torch's foreach AdamW, sqrt(v) of every bf16 param
    lasting = p["weights"] + p["optimizer state"]
    assert p["gradients"] + p["optimizer step"] > p["activations"] + p["logits / loss"]  # the step is the peak here
    assert full.tensors == lasting + p["gradients"] + p["optimizer step"]
    lora = estimate(_job())
    q = lora.parts
    assert (
        lora.tensors == q["weights"] + q["LoRA weights"] + q["optimizer state"] + q["activations"] + q["logits / loss"]
    )
    eight_bit = estimate(_job(method={"type": "full"}, train={"optim": "adamw_8bit"}))
    assert eight_bit.parts["optimizer step"] == 0  # bitsandbytes updates in place


def test_verdict_says_what_to_change():
    from tuneforge.estimate.report import fit, verdict

    job = _job(train={"per_device_batch_size": 8, "loss": "standard"})
    line = verdict(job, 24)
    assert line.startswith("does not fit on 24 GB") and "train.loss=chunked" in line
    changes = fit(job, 24 * GIB)
    assert changes is not None and changes[0] == "train.loss=chunked"
    assert verdict(_job(method={"type": "qlora"}, train={"gradient_checkpointing": True}), 80).startswith(
        "fits on 80 GB"
    )


def tuneforge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=600,
    )


def test_estimate_from_flags_alone(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(
        '{"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, '
        '"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}'
    )
    result = tuneforge(
        "estimate",
        "--model",
        str(model),
        "--method",
        "qlora",
        "--max-length",
        "2048",
        "--batch",
        "2",
        "--gradient-checkpointing",
    )
    assert result.returncode == 0, result.stderr
    assert "nf4 + double quant" in result.stderr
    verdicts = [line for line in result.stderr.splitlines() if line.startswith(("24 GB:", "48 GB:", "80 GB:"))]
    assert [v.split(":")[0] for v in verdicts] == ["24 GB", "48 GB", "80 GB"]
    assert all("fits on" in v for v in verdicts)


@pytest.mark.slow  # two `tuneforge train` processes, one training: 45 s on 2 cores
@needs_assets
def test_train_preflight_refuses_a_run_that_cannot_fit_in_one_line(tmp_path, tiny_qwen3_dir):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path, tiny_qwen3_dir, {"max_length": 128}, {"max_steps": 2})))
    result = tuneforge("train", str(config), env={"TUNEFORGE_DEVICE_MEMORY_GB": "0.01"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pre-flight" in errors[0] and "TUNEFORGE_DEVICE_MEMORY_GB=0.01" in errors[0]
    assert "Traceback" not in result.stderr
    run = tmp_path / "run"
    assert not (run / "base").exists() and not (run / "checkpoints").exists()  # stopped before any weights
    steps = [line for line in result.stderr.splitlines() if line.startswith("steps:")]
    assert len(steps) == 1 and "2 in total" in steps[0]

    forced = tuneforge("train", str(config), "--no-preflight", env={"TUNEFORGE_DEVICE_MEMORY_GB": "0.01"})
    assert forced.returncode == 0, forced.stderr
    assert not any(line.startswith("estimate:") for line in forced.stderr.splitlines())
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow  # the bench trains a row in a fresh process: 40 s on 2 cores
@pytest.mark.skipif(
    not (ASSETS / "model-configs").is_dir() or not (ASSETS / "qwen3-tokenizer").is_dir(),
    reason=f"Qwen3 config.json files or tokenizer not found under {ASSETS} (../shared/assets)",
)
def test_accuracy_bench_measures_a_full_row_and_resume_keeps_finished_rows(tmp_path):
    """bench/estimate_accuracy.py end to end on the tiny shape (the GPU matrix's code path, on whatever is here)."""
    out = tmp_path / "accuracy.json"
    row = {"shape": "tiny", "checkpointing": False, "packing": True, "max_length": 32, "batch": 1, "steps": 1}
    kept = {**row, "method": "lora", "measured_bytes": 123, "estimate": {"tensors": 100.0}, "error": -0.187}
    out.write_text(json.dumps({"command": "earlier", "environment": {"cpu": "x"}, "results": [kept]}))
    command = [sys.executable, str(ROOT / "bench" / "estimate_accuracy.py"), "--shapes", "tiny"]
    command += ["--methods", "lora", "full", "--checkpointing", "off", "--layouts", "packed", "--max-length", "32"]
    command += ["--batch", "1", "--steps", "1", "--resume", "--out", str(out)]
    result = subprocess.run(
        command, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert [run["command"] for run in record["runs"]][0] == "earlier"
    assert record["runs"][1]["command"].endswith(f"--resume --out {out}")
    lora, full = record["results"]
    assert lora == kept | {"run": 0}  # measured before: neither re-run nor rescored
    assert {k: full[k] for k in row} == row and full["method"] == "full" and full["run"] == 1
    assert full["measured_bytes"] > 0
    assert full["error"] == pytest.approx(full["estimate"]["tensors"] / full["measured_bytes"] - 1)
    assert "| tiny | full | off | packed |" in result.stdout


def test_env_reports_versions_and_offline_problems(tmp_path):
    result = tuneforge("env", "--offline-check", "--model", str(tmp_path), env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 1
    from tuneforge.env import PACKAGES, versions

    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.count("│") == 3
    }
    assert {name: rows[name] for name in PACKAGES} == versions()  # "not installed" where absent
    assert versions()["transformers"] == importlib.metadata.version("transformers")
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert any("HF_HUB_OFFLINE is not set" in p for p in problems)
    assert any("no config.json" in p for p in problems)


def test_preference_objectives_double_the_rows_and_add_their_reference():
    sft = estimate(_job(train={"per_device_batch_size": 2}))
    dpo, orpo, kto = (
        estimate(_job(method={"objective": o}, train={"per_device_batch_size": 2})) for o in ("dpo", "orpo", "kto")
    )
    # A pair is two rows: the activations of 2 pairs are those of 4 SFT samples; KTO's answers are one row each.
    assert dpo.parts["activations"] == estimate(_job(train={"per_device_batch_size": 4})).parts["activations"]
    assert dpo.parts["activations"] > 1.9 * sft.parts["activations"]
    assert kto.parts["activations"] == sft.parts["activations"]
    # LoRA: the reference is a frozen copy of the adapter (TRL's "ref"), not of the 16 GB of weights.
    assert dpo.parts["reference"] == dpo.parts["LoRA weights"] and dpo.parts["weights"] == sft.parts["weights"]
    assert "reference" not in sft.parts and "reference" not in orpo.parts  # ORPO has no reference model
    # ORPO builds full logits of 2 × 2 × 2048 tokens (TRL's ORPOTrainer): bf16 plus three fp32 copies.
    assert orpo.parts["logits / loss"] == 8192 * 151936 * 14
    full = {"type": "full", "objective": "dpo"}
    assert estimate(_job(method=full)).parts["reference"] == QWEN3_8B.params * 2  # bf16 copy
    assert estimate(_job(method={**full, "reference": "precomputed"})).parts["reference"] == 0


def test_serve_estimate_counts_weights_and_the_kv_cache_of_every_sequence():
    from tuneforge.estimate.memory import CUDA_CONTEXT
    from tuneforge.estimate.serve import estimate_serve

    lora, qlora = _job(method={"type": "lora"}), _job(method={"type": "qlora"})
    est = estimate_serve(lora, context=4096, sequences=4)
    kv_per_token = 2 * 36 * 8 * 128 * 2  # K and V, 36 layers, 8 KV heads of 128, bf16: 144 KiB
    assert est.kv_per_token == kv_per_token and est.kv_cache == kv_per_token * 4096 * 4
    trained = estimate(lora)
    rank8 = 36 * 8 * sum(i + o for i, o in QWEN3_8B.linears().values())
    assert est.weights == trained.parts["weights"] + trained.parts["LoRA weights"] == 2 * QWEN3_8B.params + 4 * rank8
    quantized = estimate(qlora).parts
    assert estimate_serve(qlora, 4096).weights == quantized["weights"] + quantized["LoRA weights"]
    assert est.total == est.weights + est.kv_cache + est.prefill + est.overhead and est.overhead > CUDA_CONTEXT
    # vLLM: its share of the GPU, less the weights, its profiled prefill and the CUDA context, holds KV blocks.
    room = 0.9 * 80 * GIB - est.weights - est.prefill_of(4096) - CUDA_CONTEXT
    assert est.vllm_kv_tokens(80 * GIB, 0.9) == int(room // kv_per_token) > 4 * 4096
    assert est.vllm_kv_tokens(16 * GIB, 0.9) == 0  # 16.4 GB of bf16 weights alone


def test_estimate_serve_from_flags_says_whether_a_14b_qlora_chat_fits_24_gb():
    result = tuneforge(
        "estimate", "--serve", "--model", "Qwen/Qwen3-14B", "--method", "qlora", "--max-length", "4096",
        "--gpu-memory", "24", env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("inference memory: 14.77 B params (4-bit nf4 weights), 4096-token context × 1")
    assert "  KV cache     0.62 GiB  (160 KiB per token)" in lines  # 2 × 40 layers × 8 × 128 × 2 bytes × 4096
    assert lines[-1].startswith("24 GB: built-in server fits; vLLM at gpu_memory_utilization 0.9: KV room for ")


QWEN3_8B_CONFIG = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
}  # fmt: skip


def test_a_prequantized_checkpoint_is_estimated_as_saved_with_its_skipped_modules_16bit():
    saved = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
             "llm_int8_skip_modules": ["lm_head", "model.layers.1.mlp"]}  # fmt: skip
    shape = Shape.from_config({**QWEN3_8B_CONFIG, "quantization_config": saved})
    assert shape.params == QWEN3_8B.params and shape.kept_linear_params == 3 * 4096 * 12288  # layer 1's MLP
    job = Job.from_config(validate({"model": {"name_or_path": "x"}, "data": {"datasets": [{"path": "x"}]},
                                    "method": {"type": "lora"}, "output": {"dir": "x"}}), shape)  # fmt: skip
    quantized = QWEN3_8B.linear_params - 3 * 4096 * 12288
    # fp4 without double quant, as the checkpoint says (method.type lora on it trains as QLoRA): 0.5 byte + 4/64.
    assert estimate(job).parts["weights"] == quantized * (0.5 + 4 / 64) + 2 * (QWEN3_8B.params - quantized)
    assert estimate(job).notes["weights"] == (
        "8.19 B params, decoder linears 4-bit fp4, as the checkpoint saved them"
    )  # fmt: skip
    assert estimate(_job(method={"type": "lora"})).parts["weights"] == 2 * QWEN3_8B.params  # the 16-bit original
    gptq = {**QWEN3_8B_CONFIG, "_name_or_path": "org/m-GPTQ", "quantization_config": {"quant_method": "gptq"}}
    with pytest.raises(UserError, match=r"^model.name_or_path: org/m-GPTQ is quantized with gptq, which tuneforge"):
        Shape.from_config(gptq)


def test_a_moe_counts_every_experts_weights_and_the_active_ones_activations():
    # Qwen3-30B-A3B's published config.json (the memory-relevant keys).
    config = {**QWEN3_8B_CONFIG, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
              "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
              "moe_intermediate_size": 768}  # fmt: skip
    moe = Shape.from_config(config)
    assert round(moe.params / 1e9, 2) == 30.53  # the model card: 30.5 B in total, 3.3 B activated
    assert moe.intermediate == 8 * 768  # activations: the 8 experts a token runs through
    assert set(moe.linears()) == {"q_proj", "k_proj", "v_proj", "o_proj"}  # what LoRA and bitsandbytes reach
    job = Job.from_config(validate({"model": {"name_or_path": "x"}, "data": {"datasets": [{"path": "x"}]},
                                    "method": {"type": "lora"}, "output": {"dir": "x"}}), moe)  # fmt: skip
    est = estimate(job)
    assert est.parts["weights"] == 2 * moe.params
    assert est.parts["LoRA weights"] == 4 * 48 * 8 * sum(i + o for i, o in moe.linears().values())
    assert est.notes["weights"] == "30.53 B params (128 experts, 8 active), 16-bit"


def test_a_cpu_total_adds_the_tokenizer_and_the_prepared_data_to_the_tensors():
    from tuneforge.estimate.memory import CUDA_CONTEXT

    cpu = _job(method={"type": "lora"}).but(device="cpu", tokens=170_048)  # alpaca_en_demo prepared at 512 tokens
    est = estimate(cpu)
    # 900 bytes per vocabulary entry (transformers 5's fast tokenizer), 116 per prepared token (estimate/host.py).
    assert est.parts["framework overhead"] == 900 * 151936 + 116 * 170_048
    assert est.total - est.tensors == 900 * 151936 + 116 * 170_048
    assert est.notes["framework overhead"] == "tokenizer, 170,048 prepared tokens (not tensors)"
    assert estimate(cpu.but(tokens=0)).parts["framework overhead"] == 900 * 151936  # flags only: no data prepared
    gpu = estimate(_job(method={"type": "lora"}))  # a GPU's overhead is its CUDA context and slack, not the host's
    assert gpu.parts["framework overhead"] == CUDA_CONTEXT + 0.05 * gpu.tensors


def test_the_step_plan_counts_every_prepared_token_for_the_pre_flight():
    import datasets

    from tuneforge.estimate.steps import steps_of

    cfg = validate({"model": {"name_or_path": "x"}, "data": {"datasets": [{"path": "x"}]}, "output": {"dir": "x"}})
    train = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[0]] * 3})
    plan = steps_of(cfg, train)
    assert (plan.longest, plan.tokens) == (4, 9)


def test_published_moe_and_qwq_shapes_count_every_expert_and_give_the_cards_sizes():
    big = Shape.from_config(PUBLISHED_SHAPES["Qwen/Qwen3-235B-A22B"])
    experts = 94 * 128 * (3 * 4096 * 1536 + 4096)  # every layer's 128 experts (gate, up, down) and its router
    attention = 94 * (4096 * 64 * 128 * 2 + 4096 * 4 * 128 * 2)
    norms = 94 * (2 * 4096 + 2 * 128) + 4096
    assert big.params == 2 * 151936 * 4096 + attention + experts + norms
    assert round(big.params / 1e9) == 235 and big.intermediate == 8 * 1536  # activations: the 8 active experts
    job = Job.from_config(
        validate({"model": {"name_or_path": "Qwen/Qwen3-235B-A22B"}, "data": {"datasets": [{"path": "x"}]},
                  "method": {"type": "qlora"}, "output": {"dir": "x"}}), big,
    )  # fmt: skip
    # QLoRA quantizes the attention's linears only: the experts stay bf16.
    assert estimate(job).parts["weights"] == attention * (0.5 + 1 / 64 + 4 / (64 * 256)) + 2 * (big.params - attention)
    assert round(Shape.from_config(PUBLISHED_SHAPES["Qwen/Qwen3-30B-A3B"]).params / 1e9, 1) == 30.5
    qwq = Shape.from_config(PUBLISHED_SHAPES["Qwen/QwQ-32B"])
    assert (qwq.vocab, qwq.layers, qwq.kv_heads, qwq.head_dim, qwq.tied) == (152064, 64, 8, 128, False)


def test_cpu_serve_estimate_counts_the_tokenizer_and_the_packed_head_and_vllm_sizes_its_gpu():
    from tuneforge.estimate.serve import estimate_serve

    cpu = _job(method={"type": "full"}).but(device="cpu")
    one, four = estimate_serve(cpu, 1024, 1), estimate_serve(cpu, 1024, 4)
    assert one.overhead == 900 * 151936  # the tokenizer; one row multiplies the head unpacked
    assert four.overhead == 900 * 151936 + 151936 * 4096 * 4  # plus the engine's prepacked fp32 head
    assert four.kv_cache == 2 * 36 * 8 * 128 * 4 * 1024 * 4  # fp32 K and V on a CPU
    gpu = estimate_serve(_job(method={"type": "qlora"}), 4096, 2)
    needed = gpu.vllm_gpu_bytes(0.9)
    assert gpu.vllm_kv_tokens(needed, 0.9) == 2 * 4096  # exactly room for both sequences' full context
    assert gpu.vllm_kv_tokens(needed * 0.99, 0.9) < 2 * 4096


def test_docs_estimate_tables_are_the_scripts_output():
    sys.path.insert(0, str(ROOT / "bench"))
    from estimate_tables import BEGIN, DOC, END, render

    generated = DOC.read_text().split(BEGIN)[1].split(END)[0]
    assert generated == f"\n\n{render()}\n\n"
