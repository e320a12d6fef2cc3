"""`tuneforge config import` on LLaMA-Factory's own example configs and dataset_info.json (tests/data/llamafactory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import needs_assets
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.errors import UserError
from tuneforge.importers.convert import import_config

LF = Path(__file__).parent / "data" / "llamafactory"
INFO = LF / "data" / "dataset_info.json"
EXAMPLES = sorted(
    p.relative_to(LF).as_posix()
    for folder in ("train_lora", "train_qlora", "train_full")
    for p in (LF / "examples" / folder).iterdir()
)
# Examples tuneforge cannot train, and the feature their one-line refusal must name.
REFUSED = {
    "examples/train_lora/mossvl_lora_sft.yaml": "dataset_info.mllm_demo.columns.images: 'images': multimodal data",
    "examples/train_lora/qwen3_lora_kto.yaml": "dataset_info.kto_en_demo.columns.kto_tag: 'label': kto labels on "
    "sharegpt messages",
    "examples/train_lora/qwen3_lora_pretrain.yaml": "stage: 'pt': pre-training on raw text",
    "examples/train_lora/qwen3_lora_reward.yaml": "stage: 'rm': reward-model training",
    "examples/train_lora/qwen3_lora_sft_ray.yaml": "dataset_dir: 'REMOTE:llamafactory/demo_data': dataset_info.json "
    "on a hub",
    "examples/train_lora/qwen3vl_lora_dpo.yaml": "dataset_info.rlhf_v.columns.images: 'images': multimodal data",
    "examples/train_lora/qwen3vl_lora_sft.yaml": "dataset_info.mllm_demo.columns.images: 'images': multimodal data",
    "examples/train_full/mossvl_full_sft.yaml": "dataset_info.mllm_demo.columns.images: 'images': multimodal data",
    "examples/train_full/qwen3vl_full_sft.yaml": "dataset_info.mllm_demo.columns.images: 'images': multimodal data",
}
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_every_example_is_listed():
    assert len(EXAMPLES) == 20 and set(REFUSED) <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_imports_to_a_checked_config_or_one_line_refusal(example, tmp_path):
    out = tmp_path / "tuneforge.yaml"
    result = cli(
        "config", "import", str(LF / example), "--dataset-info", str(INFO), "--out", str(out), "--no-check-data"
    )
    if example in REFUSED:
        assert result.exit_code == 2
        assert result.output.count("error:") == 1 and REFUSED[example] in result.output, result.output
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    check = cli("config", "check", str(out))
    assert check.exit_code == 0 and f"{out}: ok" in check.output, check.output
    report = json.loads(out.with_name("tuneforge.import.json").read_text())
    source = LF / example
    keys = set(yaml.safe_load(source.read_text())) if source.suffix == ".yaml" else None
    if keys is not None:  # every key of the file is accounted for, one entry each
        assert keys <= {e["key"] for e in report["entries"]}
    assert "| `model_name_or_path` |" in out.with_name("tuneforge.import.md").read_text()


def test_lora_sft_maps_each_key_and_sets_llamafactory_defaults(tmp_path):
    raw, cfg, report = import_config(LF / "examples/train_lora/qwen3_lora_sft.yaml", dataset_info=INFO)
    assert cfg.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507" and cfg.model.trust_remote_code
    assert (cfg.method.type, cfg.method.objective, cfg.method.rank) == ("lora", "sft", 8)
    assert (cfg.method.alpha, cfg.method.dropout, cfg.method.target_modules) == (16, 0.0, "all-linear")
    assert (cfg.data.max_length, cfg.data.truncation, cfg.data.thinking) == (2048, "truncate", "auto")
    assert [(d.path, d.format, d.max_samples) for d in cfg.data.datasets] == [
        (str(LF / "data/identity.json"), "alpaca", 1000),
        (str(LF / "data/alpaca_en_demo.json"), "alpaca", 1000),
    ]
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.lr_scheduler) == (1e-4, 3.0, "cosine")
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation, cfg.train.warmup_ratio) == (1, 8, 0.1)
    assert cfg.train.gradient_checkpointing and cfg.train.save_total_limit is None
    assert (cfg.model.dtype, cfg.distributed.timeout_minutes, cfg.output.dir) == (
        "auto",
        3000000,
        "saves/qwen3-4b/lora/sft",
    )
    status = {e.key: e.status for e in report.entries}
    assert status["lora_rank"] == "mapped" and status["template"] == "noted" and status["cutoff_len"] == "noted"
    assert status["dataloader_num_workers"] == "dropped" and status["(method.alpha)"] == "noted"


def test_shell_script_imports_like_the_yaml():
    from_yaml, _, _ = import_config(LF / "examples/train_lora/qwen3_lora_sft.yaml", dataset_info=INFO)
    from_sh, _, _ = import_config(LF / "examples/train_lora/qwen3_lora_sft.sh", dataset_info=INFO)
    assert from_sh == from_yaml


def test_dpo_stage_and_qlora_quantization():
    _, dpo, _ = import_config(LF / "examples/train_lora/qwen3_lora_dpo.yaml", dataset_info=INFO)
    assert (dpo.method.objective, dpo.method.beta, dpo.method.dpo_loss, dpo.train.learning_rate) == (
        "dpo",
        0.1,
        "sigmoid",
        5e-6,
    )
    assert dpo.data.datasets[0].format == "ranking" and dpo.data.datasets[0].path.endswith("dpo_en_demo.json")
    _, q, _ = import_config(LF / "examples/train_qlora/qwen3_lora_sft_bnb_npu.yaml", dataset_info=INFO)
    assert (q.method.type, q.method.bits, q.method.double_quant) == ("qlora", 4, False)


@pytest.mark.parametrize(
    "file, strategy, preset",
    [
        ("ds_z0_config.json", "ddp", "zero2"),
        ("ds_z2_config.json", "deepspeed", "zero2"),
        ("ds_z2_offload_config.json", "deepspeed", "zero2_offload"),
        ("ds_z3_config.json", "deepspeed", "zero3"),
        ("ds_z3_offload_config.json", "deepspeed", "zero3_offload"),
        ("ds_z2_autotp_config.json", "deepspeed", str(LF / "examples/deepspeed/ds_z2_autotp_config.json")),
        ("ds_z3_fp8_config.json", "deepspeed", str(LF / "examples/deepspeed/ds_z3_fp8_config.json")),
    ],
)
def test_each_deepspeed_config_becomes_a_preset_or_the_file(file, strategy, preset, tmp_path):
    source = yaml.safe_load((LF / "examples/train_lora/qwen3_lora_sft_ds3.yaml").read_text())
    source["deepspeed"] = f"examples/deepspeed/{file}"
    path = LF / "examples" / "train_lora" / f"_test_{tmp_path.name}.yaml"  # beside the examples: the path resolves
    path.write_text(yaml.safe_dump(source))
    try:
        _, cfg, report = import_config(path, dataset_info=INFO)
    finally:
        path.unlink()
    assert (cfg.distributed.strategy, cfg.distributed.deepspeed) == (strategy, preset)
    assert next(e for e in report.entries if e.key == "deepspeed").note


def test_unknown_dataset_and_bad_yaml_are_one_line_errors(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("stage: sft\ndataset: nope\nmodel_name_or_path: a/b\noutput_dir: o\n")
    with pytest.raises(UserError, match=r"dataset: 'nope': not defined in dataset_info.json"):
        import_config(bad, dataset_info=INFO)
    with pytest.raises(UserError, match="dataset_info.json not found"):
        import_config(bad, dataset_info=tmp_path / "missing.json")


def test_set_overrides_are_applied_and_reported():
    raw, cfg, report = import_config(
        LF / "examples/train_lora/qwen3_lora_sft.yaml", dataset_info=INFO, overrides=["train.max_steps=2"]
    )
    assert cfg.train.max_steps == 2 and raw["train"]["max_steps"] == 2
    assert any(e.key == "--set train.max_steps" for e in report.entries)


@needs_assets
@pytest.mark.slow  # 2 steps each, but torch start-up and tokenizing: 60-200 s on 2 shared cores
@pytest.mark.parametrize(
    "example, extra",
    [
        ("examples/train_lora/qwen3_lora_sft.yaml", []),
        ("examples/train_lora/qwen3_lora_dpo.yaml", []),
        # ZeRO-3 needs GPUs: the same config trains on CPU with ddp
        ("examples/train_full/qwen3_full_sft.yaml", ["distributed.strategy=ddp"]),
        ("examples/train_qlora/llama3_lora_sft_gptq.yaml", []),
    ],
)
def test_imported_example_trains_two_steps_on_the_tiny_model(example, extra, tiny_qwen3_dir, tmp_path):
    from tuneforge.train.run import train

    out = tmp_path / "tuneforge.yaml"
    sets = [
        f"model.name_or_path={tiny_qwen3_dir}",
        "train.max_steps=2",
        f"output.dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.max_length=256",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation=1",
        "data.num_proc=1",
        *extra,
    ]
    args = ["config", "import", str(LF / example), "--dataset-info", str(INFO), "--out", str(out)]
    result = cli(*args, *(a for s in sets for a in ("--set", s)))
    assert result.exit_code == 0, result.output
    run = train(load_config(out), log=lambda *_: None)
    metrics = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2


def _with_template(tmp_path, template: str) -> Path:
    source = yaml.safe_load((LF / "examples/train_lora/qwen3_lora_sft.yaml").read_text())
    source["template"] = template
    path = tmp_path / f"{template}.yaml"
    path.write_text(yaml.safe_dump(source))
    return path


@needs_assets
@pytest.mark.parametrize(
    "template, thinking, same, difference",
    [
        # LLaMA-Factory's qwen3 trains the empty think block, as data.thinking: keep_empty does: the same text; it
        # also trains the newline after <|im_end|>, which tuneforge (and TRL) leave to the template
        (
            "qwen3",
            "keep_empty",
            "91 of 91 conversations render the same text, 0 the same trained text",
            "first trained text difference at character 119: tuneforge 'you today?<|im_end|>' vs LLaMA-Factory "
            "'you today?<|im_end|>\\n'",
        ),
        # qwen3_nothink renders no think block; the Qwen3 hybrid template puts an empty one on the prompt side
        (
            "qwen3_nothink",
            "auto",
            "0 of 91 conversations render the same text, 0 the same trained text",
            "first text difference at character 52: tuneforge "
            "'im_start|>assistant\\n<think>\\n\\n</think>\\n\\nHello! I am' vs LLaMA-Factory "
            "'im_start|>assistant\\nHello! I am {{name}}, an AI as'",
        ),
    ],
)
def test_report_compares_llamafactory_rendering_with_the_qwen3_template(template, thinking, same, difference, tmp_path):
    from conftest import TOKENIZER_DIR

    from tuneforge.importers.data_check import check_datasets

    _, cfg, report = import_config(
        _with_template(tmp_path, template), dataset_info=INFO, overrides=[f"model.tokenizer={TOKENIZER_DIR}"]
    )
    assert cfg.data.thinking == thinking
    check_datasets(cfg, report)
    identity, alpaca = report.datasets
    assert (identity.kept, identity.dropped, alpaca.kept) == (91, {}, 20)
    assert f"LLaMA-Factory template {template}: {same}" in identity.notes
    assert difference in identity.notes


@needs_assets
def test_report_counts_records_dropped_by_max_length(tmp_path):
    from conftest import TOKENIZER_DIR

    from tuneforge.importers.data_check import check_datasets

    sets = [f"model.tokenizer={TOKENIZER_DIR}", "data.max_length=64", "data.truncation=drop"]
    _, cfg, report = import_config(LF / "examples/train_lora/qwen3_lora_sft.yaml", dataset_info=INFO, overrides=sets)
    check_datasets(cfg, report)
    identity = report.datasets[0]
    dropped = identity.dropped["longer than data.max_length 64"]
    assert identity.kept > 0 and dropped > 0 and identity.kept + dropped == 91
    assert f"- kept {identity.kept}, dropped: {dropped} longer than data.max_length 64" in report.to_markdown()
