"""model/logprob.py: TRL's fused LM head on the CPU through tuneforge's log-prob function gives TRL's own numbers —
the kernel's outputs and gradients, DPO's and GRPO's loss, gradients and metrics on a fixed batch, and a short run."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from conftest import TOKENIZER_DIR, needs_assets
from datasets import Dataset
from tiny_training import assert_grads_close, tiny_lora_model

import tuneforge.model.logprob as logprob
from tuneforge.model.logprob import LogProbFunction, cpu_log_probs, supported

VOCAB = 2048  # small enough that TRL's own CPU path (every position, full-tile folds) runs in seconds


def kernel_outputs(function, hidden, weight, bias, targets, weights, outputs, temperature):
    """The function's outputs, and the hidden states' gradient of a weighted sum of log-probs (and entropy)."""
    hidden = hidden.clone().requires_grad_()
    out = function.apply(hidden, weight, bias, targets, temperature, 512, None, 1.0, outputs)
    (out[0] * weights).sum().add((out[1] * weights.flip(0)).sum() if out[1] is not None else 0).backward()
    return [x.detach() if x is not None else None for x in out], hidden.grad


@pytest.mark.parametrize(
    ("outputs", "temperature"),
    [(("log_probs", "entropy", "mean_logits", "is_top1"), 1.0), (("log_probs", "entropy"), 0.7), (("log_probs",), 1.3)],
)
def test_log_probs_entropy_top1_mean_and_gradients_equal_trl_kernel(monkeypatch, outputs, temperature):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    monkeypatch.setattr(logprob, "chunk_tokens", lambda vocab: 7)  # several token chunks, a short last one
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(30, 16, generator=gen), torch.randn(VOCAB, 16, generator=gen)
    bias, weights = torch.randn(VOCAB, generator=gen), torch.randn(30, generator=gen)
    targets = torch.randint(0, VOCAB, (30,), generator=gen)
    targets[:4] = (hidden[:4] @ weight.T + bias).argmax(-1)  # some targets are the top-1 token
    want, want_grad = kernel_outputs(
        ChunkedLogProbFunction, hidden, weight, bias, targets, weights, outputs, temperature
    )
    got, got_grad = kernel_outputs(LogProbFunction, hidden, weight, bias, targets, weights, outputs, temperature)
    for name, w, g in zip(("log_probs", "entropy", "log_sum_sq", "mean_logits", "is_top1"), want, got, strict=True):
        assert (w is None) == (g is None), name
        if w is not None and w.dtype == torch.bool:
            assert torch.equal(g, w) and int(w.sum()) >= 4, name
        elif w is not None:  # entropy: log Z − Σ p·z from Σ p·W here, fp32 sums of 2,048 terms in another order
            torch.testing.assert_close(g, w, rtol=0, atol=3e-5 if name == "entropy" else 1e-5, msg=name)
    assert_grads_close({"hidden": got_grad}, {"hidden": want_grad})


def test_a_trainable_head_or_a_gpu_stays_on_trl_function():
    weight = torch.zeros(4, 2)
    assert logprob.supported(torch.zeros(1, 2), weight, None, None, ("log_probs",))
    assert not logprob.supported(torch.zeros(1, 2), weight.requires_grad_(), None, None, ("log_probs",))
    assert not logprob.supported(torch.zeros(1, 2), torch.zeros(4, 2), None, 30.0, ("log_probs",))  # soft-capping
    assert not logprob.supported(torch.zeros(1, 2, device="meta"), torch.zeros(4, 2), None, None, ("log_probs",))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # TRL's Trainer under bf16 on the CPU (tuneforge: fp32 there)
        assert not logprob.supported(torch.zeros(1, 2), torch.zeros(4, 2), None, None, ("log_probs",))


def test_the_block_restores_trl_and_nests():
    import trl.trainer.utils as trl_utils

    before = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    with cpu_log_probs():
        with cpu_log_probs():
            assert trl_utils._use_triton(torch.device("cpu"))
        assert trl_utils._ChunkedLogProbFunction.trl_function is before[0]
    assert (trl_utils._ChunkedLogProbFunction, trl_utils._use_triton) == before
    assert not trl_utils._use_triton(torch.device("cpu"))


# --- the trainers on a fixed batch: loss, gradients and logged metrics, TRL's path against tuneforge's -------------


def fixed_rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` right-padded rows of random ids below VOCAB and their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 24), generator=gen)
    mask = torch.ones_like(ids)
    for row, length in enumerate(torch.randint(12, 25, (n,), generator=gen).tolist()):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask


def loss_grads_metrics(trainer, inputs, fast: bool):
    """compute_loss, the LoRA gradients and the metrics it logs, through TRL's path or tuneforge's (`fast`)."""
    model = trainer.model
    model.zero_grad()
    trainer._metrics["train"].clear()
    chosen = []  # what `supported` answered for each fused-head call: the fast path must really be taken
    with (
        cpu_log_probs() if fast else contextlib.nullcontext(),
        mock.patch.object(logprob, "supported", lambda *a: chosen.append(supported(*a)) or chosen[-1]),
    ):
        loss = trainer.compute_loss(model, inputs)
    assert all(chosen) and bool(chosen) == fast, chosen  # DPO: the policy's call and the reference's
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    # num_tokens: TRL's running count over all calls, not this batch's
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.item(), grads, metrics


def assert_same(fast, slow) -> None:
    """Loss within 1e-5, gradients within 1e-5 of their norm, every logged metric within 1e-5."""
    assert fast[0] == pytest.approx(slow[0], abs=1e-5)
    assert_grads_close(fast[1], slow[1])
    assert fast[2].keys() == slow[2].keys() and len(slow[2]) > 3
    for key, value in slow[2].items():
        assert fast[2][key] == pytest.approx(value, abs=1e-5), key


@needs_assets
def test_dpo_loss_gradients_and_metrics_equal_trl_computation(tmp_path):
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from tuneforge.train.preference import DPOTrainer

    model = tiny_lora_model(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None, beta=0.1)
    pairs = Dataset.from_dict(
        {
            "prompt_ids": [[1]],
            "chosen_ids": [[2]],
            "rejected_ids": [[3]],
            "chosen_trained": [1],
            "rejected_trained": [1],
        }
    )  # unused: the batch below is fixed
    trainer = DPOTrainer.build(None, 0, print, model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    ids, mask = fixed_rows(4, seed=1)  # 2 pairs: chosen rows, then rejected ones
    completion = mask.clone()
    completion[:, :6] = 0  # a 6-token prompt
    batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": completion}
    model.train()
    slow = loss_grads_metrics(trainer, batch, fast=False)
    fast = loss_grads_metrics(trainer, batch, fast=True)
    assert_same(fast, slow)
    assert {"rewards/margins", "logps/chosen", "entropy", "mean_token_accuracy"} <= slow[2].keys()


@needs_assets
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_loss_gradients_and_metrics_equal_trl_computation(tmp_path, loss_type):
    from transformers import AutoTokenizer
    from trl import GRPOConfig

    from tuneforge.train.grpo import GRPOTrainer

    model = tiny_lora_model(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,  # as train/run.py sets it on the CPU
        per_device_train_batch_size=4,
        num_generations=4,
        loss_type=loss_type,
        beta=0.04,
        temperature=0.8,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}),  # unused: the batch below is fixed
        processing_class=tokenizer,
        completions=tmp_path / "completions.jsonl",
        every=0,
    )
    prompt_ids, prompt_mask = fixed_rows(4, seed=2)
    completion_ids, completion_mask = fixed_rows(4, seed=3)
    gen = torch.Generator().manual_seed(4)
    inputs = {
        "prompt_ids": prompt_ids.flip(1),  # left-padded prompts, as TRL builds them
        "prompt_mask": prompt_mask.flip(1),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.25, -0.75]),
        "ref_per_token_logps": -8 + torch.randn(completion_ids.shape, generator=gen),
        "old_per_token_logps": None,
        "num_items_in_batch": completion_mask.sum(),
    }
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before the first step
    slow = loss_grads_metrics(trainer, inputs, fast=False)
    fast = loss_grads_metrics(trainer, inputs, fast=True)
    assert_same(fast, slow)
    assert {"kl", "entropy"} <= slow[2].keys()


@needs_assets
@pytest.mark.slow  # two 2-step DPO runs on the real vocabulary, one through TRL's slow CPU path: about 60 s
def test_two_dpo_steps_log_what_trl_slow_path_logs(tiny_qwen3_dir, tmp_path, monkeypatch):
    from test_preference_train import logged, short_raw

    from tuneforge.config import validate
    from tuneforge.rundir import Run
    from tuneforge.train.run import train

    def run(name: str):
        (tmp_path / name).mkdir()  # short_raw writes its data beside the run
        raw = short_raw(tiny_qwen3_dir, tmp_path / name / "run", "dpo")
        raw["train"] |= {"max_steps": 2, "logging_steps": 1}
        train(validate(raw), log=lambda *_: None)
        return logged(Run(tmp_path / name / "run"))

    fast = run("fast")
    import tuneforge.train.preference as preference

    monkeypatch.setattr(preference, "cpu_log_probs", contextlib.nullcontext)
    slow = run("slow")
    steps = [e for e in slow if "loss" in e and "step" in e]
    assert len(steps) == 2
    for want, got in zip(steps, [e for e in fast if "loss" in e and "step" in e], strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), (want["step"], key)
