"""Preference training end to end on a tiny random Qwen3 with the real tokenizer: DPO, ORPO, SimPO and KTO each move
their own metric the right way."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import DATA_DIR, needs_assets
from safetensors.torch import load_file
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import validate
from tuneforge.train.run import train

quiet = {"log": lambda *_: None}


def dpo_config(model_dir, out, **method):
    return validate(
        {
            "model": {"name_or_path": str(model_dir), "init": "random"},
            "data": {
                # The 57 pairs of up to 192 tokens (the longer ones are dropped), 15 % of all held out.
                "datasets": [{"path": str(DATA_DIR / "dpo_zh_demo.json")}],
                "max_length": 192,
                "val_size": 0.15,
                "cache_dir": str(out.parent / "cache"),
            },
            "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "objective": "dpo", **method},
            "train": {
                "max_steps": 8,
                "learning_rate": 1e-2,
                "per_device_batch_size": 4,
                "logging_steps": 2,
                "eval_steps": 8,
                "save_steps": 1000,
                "lr_scheduler": "constant",
            },
            "output": {"dir": str(out)},
        }
    )


COLOURS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]


def short_data(folder, kto: bool = False):
    """16 short prompts (about 30 tokens with their answer), each with a good and a bad answer: pairs, or KTO rows."""
    rows = []
    for i, colour in enumerate(COLOURS * 2):
        prompt, good, bad = f"Name a colour ({i}).", f"{colour.capitalize()}.", "I will not answer that."
        if kto:
            rows += [
                {"prompt": prompt, "completion": good, "label": True},
                {"prompt": prompt, "completion": bad, "label": False},
            ]
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    path = folder / ("kto.jsonl" if kto else "pairs.jsonl")
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return path


def short_raw(model_dir, out, objective, **method) -> dict:
    """A few steps on `short_data` (LoRA, fixed learning rate, metrics every 2 steps), as a raw config."""
    return {
        "model": {"name_or_path": str(model_dir), "init": "random"},
        "data": {
            "datasets": [{"path": str(short_data(out.parent, kto=objective == "kto"))}],
            "max_length": 64,
            "packing": False,
            "cache_dir": str(out.parent / "cache"),
        },
        "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "objective": objective, **method},
        "train": {
            "max_steps": 4,
            "learning_rate": 1e-2,
            "per_device_batch_size": 4,
            "logging_steps": 2,
            "save_steps": 1000,
            "lr_scheduler": "constant",
        },
        "output": {"dir": str(out)},
    }


def short_config(model_dir, out, objective, **method):
    """`short_raw`, validated."""
    return validate(short_raw(model_dir, out, objective, **method))


def logged(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


@pytest.mark.slow  # about 30-70 s on 2 cores: run in the suite's second step (scripts/test.sh)
@needs_assets
def test_dpo_rewards_rise_and_held_out_chosen_gains_on_rejected(tiny_qwen3_dir, tmp_path):
    run = train(dpo_config(tiny_qwen3_dir, tmp_path / "run"), **quiet)
    entries = logged(run)
    steps = [e for e in entries if "rewards/margins" in e]
    assert [e["step"] for e in steps] == [2, 4, 6, 8]
    first, last = steps[0], steps[-1]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.2
    assert last["rewards/accuracies"] > first["rewards/accuracies"]
    assert last["loss"] < first["loss"]
    # Held-out pairs: the chosen answers' log-prob rose relative to the rejected ones (against the reference, which
    # is the untrained model: the adapter disabled).
    [held_out] = [e for e in entries if "eval_rewards/margins" in e]
    assert held_out["eval_rewards/margins"] > 0
    summary = json.loads(run.summary.read_text())
    assert summary["objective"] == "dpo" and summary["steps"] == 8
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert (run.root / "rewards.png").is_file() and run.loss_plot.is_file()


@pytest.mark.slow  # a 4-step DPO run, then its eval: about 30 s on 2 busy cores
@needs_assets
def test_eval_heldout_loss_of_a_dpo_run_reports_what_trl_logs_for_its_validation_pairs(tiny_qwen3_dir, tmp_path):
    """Issue 22: the held-out loss task (the quick suite's first) refused every preference run."""
    raw = short_raw(tiny_qwen3_dir, tmp_path / "run", "dpo")
    raw["data"]["val_size"] = 4
    raw["train"]["eval_steps"] = 4  # TRL evaluates the final adapter on the same pairs
    run = train(validate(raw), **quiet)
    [trl] = [e for e in logged(run) if "eval_rewards/margins" in e]
    result = CliRunner().invoke(app, ["eval", "--run", str(run.root), "--tasks", "heldout-loss"])
    assert result.exit_code == 0, result.output
    task = json.loads((run.eval_dir / "heldout-loss" / "results.json").read_text())["tasks"]["heldout-loss"]
    metrics = task["metrics"]
    assert task["n"] == 4 and "loss" not in metrics and "perplexity" not in metrics
    # The baseline (the adapter off) is DPO's reference for a new adapter: no reward, loss log 2, no pair won.
    assert metrics["rewards/margins"]["baseline"] == 0.0 and metrics["rewards/accuracies"]["baseline"] == 0.0
    assert metrics["preference_loss"]["baseline"] == pytest.approx(math.log(2), abs=1e-6)
    # The tuned adapter: what TRL logged on the validation pairs at the last step.
    assert metrics["preference_loss"]["tuned"] == pytest.approx(trl["eval_loss"], abs=2e-3)
    assert metrics["rewards/margins"]["tuned"] == pytest.approx(trl["eval_rewards/margins"], abs=2e-3)
    assert metrics["rewards/accuracies"]["tuned"] == trl["eval_rewards/accuracies"]
    assert metrics["rewards/chosen"]["tuned"] == pytest.approx(trl["eval_rewards/chosen"], abs=2e-3)
    assert metrics["rewards/margins"]["tuned"] > 0.1


def _first_and_last(run, key: str) -> tuple[dict, dict]:
    steps = [e for e in logged(run) if key in e]
    assert [e["step"] for e in steps] == [2, 4]
    return steps[0], steps[-1]


@pytest.mark.slow  # 15-20 s of CPU, a minute on 2 busy cores
@needs_assets
def test_orpo_raises_the_chosen_log_odds_with_the_nll_on_answers_only(tiny_qwen3_dir, tmp_path):
    run = train(short_config(tiny_qwen3_dir, tmp_path / "run", "orpo"), **quiet)
    first, last = _first_and_last(run, "log_odds_chosen")
    assert last["log_odds_chosen"] > first["log_odds_chosen"] + 1
    assert last["log_odds_ratio"] > first["log_odds_ratio"]
    assert last["nll_loss"] < first["nll_loss"]
    # The NLL term is the chosen answers' mean NLL over their trained tokens (TRL's own includes the prompt).
    for entry in (first, last):
        assert entry["nll_loss"] == pytest.approx(-entry["logps/chosen"], abs=1e-3)
    assert json.loads(run.summary.read_text())["objective"] == "orpo"
    assert sorted(p.name for p in run.adapter.iterdir() if p.is_dir()) == []  # no reference adapter saved


@pytest.mark.slow  # 15-20 s of CPU, a minute on 2 busy cores
@needs_assets
def test_simpo_widens_the_length_normalised_margin(tiny_qwen3_dir, tmp_path):
    run = train(short_config(tiny_qwen3_dir, tmp_path / "run", "simpo", beta=2.0, simpo_gamma=0.5), **quiet)
    first, last = _first_and_last(run, "rewards/margins")
    assert last["rewards/margins"] > first["rewards/margins"] + 1
    assert last["rewards/accuracies"] == 1.0
    assert first["nll_loss"] == last["nll_loss"] == 0.0  # SimPO: no NLL term (cpo_alpha 0)
    # SimPO's reward is beta times the answer's mean log-prob per trained token.
    assert last["rewards/chosen"] == pytest.approx(2.0 * last["logps/chosen"], rel=1e-4)


@pytest.mark.slow  # 15-20 s of CPU, a minute on 2 busy cores
@needs_assets
def test_kto_rewards_desirable_answers_over_undesirable_ones(tiny_qwen3_dir, tmp_path):
    lines = []
    run = train(
        short_config(tiny_qwen3_dir, tmp_path / "run", "kto"), log=lambda *a: lines.append(" ".join(map(str, a)))
    )
    assert (
        "data.group_by_length: not used by method.objective: kto; its KL term pairs neighbours in dataset order"
        in lines
    )
    first, last = _first_and_last(run, "rewards/margins")
    assert "kl" in first and "kl" in last
    assert last["rewards/chosen"] > first["rewards/chosen"]
    assert last["rewards/rejected"] < first["rewards/rejected"]
    assert last["rewards/margins"] > first["rewards/margins"] + 1
    assert last["loss"] < first["loss"]
    assert (run.adapter / "adapter_model.safetensors").is_file() and not (run.adapter / "ref").exists()


@pytest.mark.slow  # an SFT run, then DPO on its adapter: about a minute on 2 busy cores
@needs_assets
def test_dpo_continues_an_sft_adapter_against_the_sft_model(tiny_qwen3_dir, tmp_path):
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text("\n".join(json.dumps({"instruction": f"Say {c}.", "output": c}) for c in COLOURS))
    sft = validate(
        {
            "model": {"name_or_path": str(tiny_qwen3_dir)},
            "data": {"datasets": [{"path": str(sft_data)}], "cache_dir": str(tmp_path / "cache")},
            "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "train": {"max_steps": 3, "learning_rate": 1e-2, "per_device_batch_size": 4, "save_steps": 1000},
            "output": {"dir": str(tmp_path / "sft")},
        }
    )
    sft_run = train(sft, **quiet)
    dpo = short_raw(tiny_qwen3_dir, tmp_path / "dpo", "dpo", adapter=str(sft_run.root))
    dpo["model"]["init"] = "pretrained"
    for key in ("rank", "alpha", "dropout"):  # the adapter brings its own
        del dpo["method"][key]
    del dpo["data"]["packing"]  # the default (true): preference rows are padded, and training says so
    dpo["train"] |= {"max_steps": 2, "logging_steps": 1}
    lines = []
    run = train(validate(dpo), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert f"method.adapter: continuing {sft_run.adapter} (trained on {tiny_qwen3_dir})" in lines
    assert "data.packing: not used by method.objective: dpo; its rows are padded" in lines
    # The reference is the SFT model: at the first step the policy (the SFT adapter, not yet updated) equals it
    # exactly. Against the base model (adapter disabled) the SFT adapter's rewards would not be 0.
    first, second = [e for e in logged(run) if "rewards/chosen" in e]
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
    assert second["rewards/margins"] > 0
    before, after = (load_file(a / "adapter_model.safetensors") for a in (sft_run.adapter, run.adapter))
    assert before.keys() == after.keys() and len(before) == 2 * 2 * 2  # q and v, A and B, 2 layers
    assert any(not torch.equal(before[k], after[k]) for k in before)
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert (config["r"], sorted(config["target_modules"])) == (4, ["q_proj", "v_proj"])


def test_adapter_must_be_an_adapter_or_a_lora_run(tmp_path):
    from tuneforge.errors import UserError
    from tuneforge.model.adapters import continued_adapter

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match=r"method.adapter: .*run is a run folder without adapter/adapter_config.json"):
        continued_adapter(str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"method.adapter: .*plain is neither a LoRA adapter folder"):
        (tmp_path / "plain").mkdir()
        continued_adapter(str(tmp_path / "plain"))
    with pytest.raises(UserError, match=r"method.adapter: .*missing: not found"):
        continued_adapter(str(tmp_path / "missing"))
    (tmp_path / "run" / "adapter").mkdir()
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    assert continued_adapter(str(tmp_path / "run")) == tmp_path / "run" / "adapter"


@pytest.fixture(scope="module")
def dpo_on_one_process(tiny_qwen3_dir, tmp_path_factory):
    """3 DPO steps on one process, the reference of the multi-process runs: (raw config, run)."""
    root = tmp_path_factory.mktemp("dpo-one")
    raw = short_raw(tiny_qwen3_dir, root / "run", "dpo")
    raw["model"] |= {"init": "pretrained", "dtype": "fp32"}
    raw["data"]["group_by_length"] = False  # the same seeded order on 1 and 2 processes
    raw["train"] |= {"max_steps": 3, "logging_steps": 1}
    return raw, train(validate(raw), **quiet)


@pytest.mark.slow  # a 2-process run each: a minute or two on 2 busy cores
@needs_assets
@pytest.mark.parametrize(
    "strategy",
    [[], ["distributed.strategy=deepspeed", "distributed.deepspeed=zero3"], ["distributed.strategy=fsdp"]],
    ids=["ddp", "zero3", "fsdp"],
)
def test_dpo_on_two_processes_trains_like_one(dpo_on_one_process, tmp_path, strategy):
    from test_distributed import BIN, HALF_BATCH, finish, free_port, launch, step_losses

    raw, one = dpo_on_one_process
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(raw | {"output": {"dir": "run"}}))
    port = str(free_port())
    result = finish(
        launch(
            [str(BIN / "tuneforge"), "train", str(job), HALF_BATCH, *strategy, "--nproc", "2", "--master-port", port],
            tmp_path / "two",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / "run"
    expected, got = step_losses(one.root), step_losses(two)
    assert sorted(got) == [1, 2, 3]
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4, abs=1e-6), (step, got, expected)
    margins = [json.loads(line).get("rewards/margins") for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert margins[2] == pytest.approx(logged(one)[2]["rewards/margins"], rel=1e-3, abs=1e-6)
    reference, adapter = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (one.root, two))
    assert adapter.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(adapter[key], value, rtol=1e-4, atol=1e-5)
