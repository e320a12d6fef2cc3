"""`tuneforge config import` on ms-swift's own example command lines (tests/data/swift)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.errors import UserError
from tuneforge.importers.convert import PROGRAMS, import_config
from tuneforge.importers.draft import parse_command

SWIFT = Path(__file__).parent / "data" / "swift" / "examples" / "train"
EXAMPLES = sorted(p.relative_to(SWIFT).as_posix() for p in SWIFT.rglob("*.sh"))
REFUSED = {
    "rlhf/dpo/lora.sh": "rpo_alpha: 0.1: an SFT loss term mixed into the DPO loss (RPO) is not supported",
    "rlhf/dpo/full.sh": "rpo_alpha: 0.1: an SFT loss term mixed into the DPO loss (RPO) is not supported",
    "rlhf/cpo.sh": "rlhf_type: 'cpo': rlhf_type cpo",
}
runner = CliRunner()


def test_every_example_is_listed():
    assert len(EXAMPLES) == 12 and set(REFUSED) <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_imports_to_a_checked_config_or_one_line_refusal(example, tmp_path):
    out = tmp_path / "tuneforge.yaml"
    result = runner.invoke(app, ["config", "import", str(SWIFT / example), "--from", "swift", "--out", str(out)])
    if example in REFUSED:
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert REFUSED[example] in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    check = runner.invoke(app, ["config", "check", str(out)])
    assert check.exit_code == 0 and f"{out}: ok" in check.output, check.output


def test_lora_sft_line_maps_datasets_placeholders_and_swift_defaults():
    raw, cfg, report = import_config(SWIFT / "lora_sft.sh")
    assert (cfg.model.name_or_path, cfg.model.hub) == ("Qwen/Qwen2.5-7B-Instruct", "modelscope")
    assert [(d.path, d.source, d.max_samples, d.system) for d in cfg.data.datasets] == [
        ("AI-ModelScope/alpaca-gpt4-data-zh", "modelscope", 500, "You are a helpful assistant."),
        ("AI-ModelScope/alpaca-gpt4-data-en", "modelscope", 500, "You are a helpful assistant."),
        ("swift/self-cognition", "modelscope", 500, "You are a helpful assistant."),
    ]
    assert cfg.data.datasets[2].placeholders == {"name": "swift-robot", "author": "swift"}
    assert (cfg.method.type, cfg.method.rank, cfg.method.alpha, cfg.method.dropout) == ("lora", 8, 32, 0.05)
    assert (cfg.train.learning_rate, cfg.train.gradient_accumulation, cfg.train.weight_decay) == (1e-4, 16, 0.1)
    assert (cfg.train.eval_steps, cfg.data.val_size, cfg.data.max_length, cfg.data.num_proc) == (None, 0.0, 2048, 4)
    status = {e.key: e.status for e in report.entries}
    assert status["eval_steps"] == "dropped" and status["env.CUDA_VISIBLE_DEVICES"] == "noted"
    assert status["(train.weight_decay)"] == "noted"
    from tuneforge.importers.data_check import check_datasets

    check_datasets(cfg, report)  # hub datasets are never downloaded by the check
    assert [d.notes for d in report.datasets][0] == [
        "not checked: not a local file here (`tuneforge download AI-ModelScope/alpaca-gpt4-data-zh --kind dataset`)"
    ]


def test_multi_gpu_kto_line_computes_accumulation_and_keeps_the_effective_batch():
    _, cfg, report = import_config(SWIFT / "rlhf/kto.sh")
    assert (cfg.method.objective, cfg.distributed.nproc, cfg.distributed.strategy) == ("kto", 2, "deepspeed")
    # $(expr 16 / 2) = 8 at batch 1; kto needs 2 per batch: 2 x 4
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation) == (2, 4)
    assert cfg.data.val_size == 0.01 and cfg.train.eval_steps == 100
    assert cfg.data.datasets[0].max_samples == 10000


def test_dpo_without_rpo_alpha_imports(tmp_path):
    text = (SWIFT / "rlhf/dpo/lora.sh").read_text().replace("    --rpo_alpha 0.1 \\\n", "")
    line = tmp_path / "dpo.sh"
    line.write_text(text)
    _, cfg, _ = import_config(line, "swift")
    assert (cfg.method.objective, cfg.method.type, cfg.method.alpha) == ("dpo", "lora", 32)


def test_thinking_line_reads_subsets_and_ignore_empty_think():
    _, cfg, _ = import_config(SWIFT / "think_model/qwen3_demo1.sh")
    assert [(d.path, d.subset, d.max_samples) for d in cfg.data.datasets] == [
        ("swift/Qwen3-SFT-Mixin", None, 2000),
        ("swift/self-cognition", "empty_think", 600),
    ]
    assert (cfg.data.thinking, cfg.model.kernels) == ("auto", "liger")


def test_parse_command_reads_continuations_prefixes_and_lists():
    kind, args = parse_command(
        "#!/bin/bash\nN=4\nUSE_HF=1 NPROC_PER_NODE=$N swift sft --model a/b \\\n  --dataset 'x#5' y --lr=1e-4 --flag\n",
        PROGRAMS,
    )
    assert kind == "swift sft"
    assert args == {
        "model": "a/b",
        "dataset": ["x#5", "y"],
        "lr": 1e-4,
        "flag": True,
        "env.USE_HF": "1",
        "env.NPROC_PER_NODE": "4",
    }
    with pytest.raises(UserError, match="no line starts with"):
        parse_command("echo hi\n", PROGRAMS)


def test_from_swift_on_a_yaml_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("a: 1\n")
    with pytest.raises(UserError, match="--from swift reads a `swift sft`"):
        import_config(path, "swift")
