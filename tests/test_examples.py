"""Every config in examples/ runs as written: it validates, and each dataset it names resolves (no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from huggingface_hub.utils import validate_repo_id

from tuneforge.config import load_config
from tuneforge.data.conversation import Message
from tuneforge.data.sources import load_conversations, messages_view
from tuneforge.objective import Objective

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DATA_COMMAND = "tuneforge demo --data-only"

# A record of each hub dataset the examples name, with the columns of its dataset card, and the assistant turn it
# must become: so the test checks that the example's format and columns fit the published layout.
HUB_ROWS = {
    ("FreedomIntelligence/medical-o1-reasoning-SFT", "en"): (
        {"Question": "Chest pain at 45: next step?", "Complex_CoT": "Rule out a heart attack.", "Response": "An ECG."},
        Message("assistant", "An ECG.", reasoning="Rule out a heart attack."),
    ),
    ("llamafactory/DPO-En-Zh-20k", "en"): (
        {
            "conversations": [{"from": "human", "value": "Name a prime."}],
            "chosen": {"from": "gpt", "value": "7."},
            "rejected": {"from": "gpt", "value": "8."},
        },
        Message("assistant", "7."),
    ),
    ("yahma/alpaca-cleaned", None): (
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, move, sleep."},
        Message("assistant", "Eat, move, sleep."),
    ),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder where the examples' documented data command has run, as a user runs it."""
    cwd = tmp_path_factory.mktemp("examples")
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *DATA_COMMAND.split()[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd


def test_examples_are_the_documented_jobs():
    assert [p.name for p in EXAMPLES] == [
        "qwen3-32b-medical-reasoning-sft.yaml",
        "qwen3-4b-roleplay-huanhuan-lora.yaml",
        "qwen3-8b-dpo-lora.yaml",
        "qwen3-8b-reasoning-chat-mix.yaml",
        "qwen3-8b-self-cognition-lora.yaml",
        "qwq-32b-medical-reasoning-lora.yaml",
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_data_resolves(example, data_dir, monkeypatch):
    cfg = load_config(example)
    validate_repo_id(cfg.model.name_or_path)
    monkeypatch.chdir(data_dir)
    hub_calls = []

    def load_dataset(path, name=None, split=None):
        hub_calls.append((path, name, split))
        return [HUB_ROWS[(path, name)][0]]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    for ds in cfg.data.datasets:
        convs = load_conversations(ds, log=lambda *_: None, objective=Objective.of(cfg.method))
        if ds.source == "local" or Path(ds.path).exists():
            assert not hub_calls, f"{ds.path} is local but went to the hub"
            assert DATA_COMMAND in example.read_text(encoding="utf-8"), f"{example.name}: say how {ds.path} is made"
            assert len(convs) == {"self_cognition.json": 40, "huanhuan.json": 3729}[Path(ds.path).name]
        else:
            validate_repo_id(ds.path)
            assert hub_calls.pop() == (ds.path, ds.subset, "train")
            first = messages_view(convs[0])  # a preference sample: its prompt, then the chosen and rejected answers
            answers = 1 if cfg.method.objective == "sft" else 2
            assert [m.role for m in first.messages] == ["user"] + ["assistant"] * answers
            assert first.messages[1] == HUB_ROWS[(ds.path, ds.subset)][1]


def test_dpo_example_continues_the_sft_example():
    dpo, sft = (
        load_config(ROOT / "examples" / name)
        for name in ("qwen3-8b-dpo-lora.yaml", "qwen3-8b-self-cognition-lora.yaml")
    )
    assert dpo.method.adapter == sft.output.dir and dpo.model.name_or_path == sft.model.name_or_path
    assert (dpo.method.objective, dpo.method.beta) == ("dpo", 0.1)
