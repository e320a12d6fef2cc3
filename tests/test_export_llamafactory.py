"""`tuneforge config export --to llamafactory`: LLaMA-Factory's examples survive import → export → import."""

from __future__ import annotations

import json

import pytest
import yaml
from test_import_llamafactory import EXAMPLES, INFO, LF, REFUSED, cli

from tuneforge.errors import UserError
from tuneforge.importers.convert import import_config
from tuneforge.importers.llamafactory import RULES

ROUND_TRIP = [e for e in EXAMPLES if e not in REFUSED and e.endswith(".yaml")]


@pytest.mark.parametrize("example", ROUND_TRIP)
def test_example_survives_import_export_import(example, tmp_path):
    _, first, _ = import_config(LF / example, dataset_info=INFO)
    ours = tmp_path / "tuneforge.yaml"
    assert (
        cli(
            "config", "import", str(LF / example), "--dataset-info", str(INFO), "--out", str(ours), "--no-check-data"
        ).exit_code
        == 0
    )
    theirs = tmp_path / "lf" / "llamafactory.yaml"
    theirs.parent.mkdir()
    result = cli("config", "export", str(ours), "--to", "llamafactory", "--out", str(theirs))
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(theirs.read_text())
    assert set(exported) <= set(RULES)  # only keys LLaMA-Factory has (and the importer knows)
    info = json.loads((theirs.parent / "dataset_info.json").read_text())
    assert sorted(info) == sorted(exported["dataset"].split(","))
    report = json.loads((tmp_path / "lf" / "llamafactory.export.json").read_text())
    assert report["entries"] and report["refusals"] == []
    _, second, _ = import_config(theirs)
    a, b = first.model_dump(), second.model_dump()
    # tuneforge's auto has no LLaMA-Factory twin: qwen3 with enable_thinking false (the same for data without
    # reasoning, which it strips) comes back as off
    assert (a["data"].pop("thinking"), b["data"].pop("thinking")) in (("auto", "off"), ("keep_empty", "keep_empty"))
    assert a == b


def test_exported_lora_sft_yaml(tmp_path):
    ours = tmp_path / "tuneforge.yaml"
    cli(
        "config",
        "import",
        str(LF / "examples/train_lora/qwen3_lora_sft.yaml"),
        "--dataset-info",
        str(INFO),
        "--out",
        str(ours),
        "--no-check-data",
    )
    out = tmp_path / "llamafactory.yaml"
    assert cli("config", "export", str(ours), "--out", str(out)).exit_code == 0
    lf = yaml.safe_load(out.read_text())
    assert {
        k: lf[k]
        for k in (
            "stage",
            "finetuning_type",
            "lora_rank",
            "lora_alpha",
            "lora_dropout",
            "lora_target",
            "template",
            "enable_thinking",
            "cutoff_len",
            "learning_rate",
            "dataset_dir",
        )
    } == {
        "stage": "sft",
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "template": "qwen3",
        "enable_thinking": False,
        "cutoff_len": 2048,
        "learning_rate": 1e-4,
        "dataset_dir": str(tmp_path),
    }
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["identity_0"] == {
        "file_name": str(LF / "data/identity.json"),
        "formatting": "alpaca",
        "num_samples": 1000,
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    }


def test_a_loss_llamafactory_lacks_is_refused(tmp_path):
    _, cfg, _ = import_config(LF / "examples/train_lora/qwen3_lora_dpo.yaml", dataset_info=INFO)
    path = tmp_path / "c.yaml"
    raw = cfg.model_dump(mode="json")
    raw["method"]["dpo_loss"] = "robust"
    path.write_text(yaml.safe_dump(raw))
    from tuneforge.importers.convert import export_config

    with pytest.raises(UserError, match=r"method.dpo_loss: 'robust': LLaMA-Factory's pref_loss has sigmoid, ipo"):
        export_config(path, "llamafactory", tmp_path / "lf.yaml")
