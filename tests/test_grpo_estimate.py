"""GRPO's memory terms and step count (estimate/grpo.py, estimate/steps.py)."""

from __future__ import annotations

from tuneforge.config import validate
from tuneforge.estimate.memory import Job, Shape, estimate
from tuneforge.estimate.steps import steps_of

QWEN3_8B = Shape(
    vocab=151936, hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, tied=False
)


def grpo_job(method_type: str = "lora", longest: int = 0, **grpo) -> Job:
    cfg = validate(
        {
            "model": {"name_or_path": "Qwen/Qwen3-8B"},
            "data": {"datasets": [{"path": "x.jsonl"}], "max_length": 512},
            "method": {"type": method_type, "objective": "grpo", "grpo": {"max_completion_length": 1024, **grpo}},
            "train": {"per_device_batch_size": 8, "gradient_accumulation": 4},
            "output": {"dir": "run"},
        }
    )
    return Job.from_config(cfg, QWEN3_8B, "cuda", longest)


def test_generation_kv_cache_and_completion_logits():
    est = estimate(grpo_job())
    # Rows are a prompt (data.max_length, no data seen) and its completion.
    assert est.job.max_length == 512 + 1024
    # KV cache of the generation batch: 8 × 4 rows × 1,536 tokens × 36 layers × (K, V) × 8 heads × 128 × bf16.
    kv = 32 * 1536 * 36 * 2 * 8 * 128 * 2
    assert est.parts["generation"] == kv + 32 * 151936 * 4 * 2
    # The loss phase keeps the logits of the completion tokens only: 8 rows × 1,024 × vocab × (bf16 + 2 fp32).
    assert est.parts["logits / loss"] == 8 * 1024 * 151936 * (2 + 8)
    assert "reference" not in est.parts  # beta 0: no reference model
    p = est.parts
    lasting = p["weights"] + p["LoRA weights"] + p["optimizer state"]
    phases = (p["activations"] + p["logits / loss"], p["gradients"] + p["optimizer step"], p["generation"])
    assert est.total == lasting + max(phases) + p["framework overhead"]


def test_a_reference_with_beta():
    lora = estimate(grpo_job(beta=0.04))
    assert lora.parts["reference"] == lora.parts["LoRA weights"]  # TRL's frozen copy of the adapter
    full = estimate(grpo_job("full", beta=0.04))
    assert full.parts["reference"] == full.parts["weights"]  # a second copy of the model


def test_steps_count_completions_and_rows_include_the_completion():
    import datasets

    cfg = validate(
        {
            "model": {"name_or_path": "m"},
            "data": {"datasets": [{"path": "x.jsonl"}]},
            "method": {"objective": "grpo", "grpo": {"num_generations": 4, "max_completion_length": 64}},
            "train": {"per_device_batch_size": 8, "gradient_accumulation": 2, "epochs": 1},
            "output": {"dir": "run"},
        }
    )
    prompts = datasets.Dataset.from_dict({"prompt": ["p"] * 10, "length": [30] * 9 + [41]})
    plan = steps_of(cfg, prompts)
    # 10 prompts × 4 completions = 40 samples; 8 per micro-batch, 2 per step → ceil(5 / 2) = 3 steps (as TRL's
    # sampler, which repeats each prompt num_generations times, gives the Trainer).
    assert (plan.samples, plan.steps_per_epoch, plan.longest) == (40, 3, 41 + 64)
