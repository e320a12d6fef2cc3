"""--device-map / --max-memory: chat, eval and serve hand them to from_pretrained (a 4-bit base too), and refuse
them in one line where they mean nothing. Spreading over several GPUs itself needs GPUs (docs/serving.md)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import needs_assets
from test_export_merge import error_line
from tiny_adapter import make_tiny_adapter
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.conversation import Message
from tuneforge.errors import UserError
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.engine import load_engine
from tuneforge.infer.spec import resolve_spec
from tuneforge.model import load
from tuneforge.model.load import DeviceMap


@pytest.fixture
def two_gpus(monkeypatch) -> None:
    """A machine that reports two GPUs to the --device-map check (torch's other queries still say CPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def from_pretrained_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every AutoModelForCausalLM.from_pretrained call, which then loads on this CPU."""
    from transformers import AutoModelForCausalLM

    real, calls = AutoModelForCausalLM.from_pretrained, []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        # The GPUs are pretend: load where bitsandbytes and torch can here, as load_model does without a map.
        on_cpu = {k: v for k, v in kwargs.items() if k not in ("device_map", "max_memory")}
        return real(*args, **on_cpu, **({"device_map": {"": "cpu"}} if "quantization_config" in kwargs else {}))

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", staticmethod(spy))
    return calls


def placement(calls: list[dict]) -> list[tuple]:
    return [(c.get("device_map"), c.get("max_memory")) for c in calls]


@needs_assets
def test_chat_hands_the_device_map_and_max_memory_to_from_pretrained(tiny_qwen3_dir, two_gpus, from_pretrained_calls):
    args = ["chat", "--model", str(tiny_qwen3_dir), "--prompt", "hi", "--max-new-tokens", "2", "--greedy",
            "--device-map", "balanced", "--max-memory", "0=20GiB, cpu=4GiB"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert placement(from_pretrained_calls) == [("balanced", {0: "20GiB", "cpu": "4GiB"})]


@needs_assets
def test_eval_hands_the_device_map_to_the_one_load_both_models_share(
    tiny_qwen3_dir, tmp_path, two_gpus, from_pretrained_calls
):
    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path / "adapter")
    suite = tmp_path / "probe.yaml"
    task = "{name: probe, type: probe, max_new_tokens: 2, placeholders: {name: Bot, author: Team}}"
    suite.write_text(f"name: probe\ntasks:\n  - {task}\n")
    from_pretrained_calls.clear()  # making the adapter loaded the base once
    args = ["eval", "--model", str(tiny_qwen3_dir), "--adapter", str(adapter), "--suite", str(suite), "--limit", "2",
            "--device-map", "sequential", "--out", str(tmp_path / "eval")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert placement(from_pretrained_calls) == [("sequential", None)]  # one base load, the adapter rides on it
    probe = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]["probe"]
    assert probe["n"] == 2 and set(probe["metrics"]["accuracy"]) == {"baseline", "tuned"}


@needs_assets
def test_the_server_engine_loads_a_4bit_base_with_the_device_map(
    tiny_qwen3_dir, two_gpus, from_pretrained_calls, monkeypatch
):
    bnb = pytest.importorskip("bitsandbytes")
    real, loaded = load.load_model, []

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(load, "load_model", spy)
    spec = resolve_spec(model=str(tiny_qwen3_dir), quantize=True, device_map=DeviceMap("auto"))
    engine = load_engine(spec)  # what `tuneforge serve` runs on
    # The device map replaces the one-device placement of quantized weights ({"": "cpu"} here).
    assert placement(from_pretrained_calls) == [("auto", None)]
    assert from_pretrained_calls[0]["quantization_config"].load_in_4bit
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in loaded[0].modules()) == 14
    answer = engine.chat([Message("user", "hi")], SamplingParams(max_new_tokens=3, temperature=0)).result()
    assert answer.completion_tokens == 3


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--max-memory", "cpu=4GiB"], "error: --max-memory caps what --device-map places on each device; give "
                                       "--device-map too"),
        (["--device-map", "auto", "--max-memory", "0:20GiB"], "error: --max-memory '0:20GiB': expected DEVICE=SIZE, "
                                                              "DEVICE a GPU index or cpu (0=20GiB)"),
    ],
)  # fmt: skip
def test_bad_max_memory_is_refused_in_one_line(tmp_path, flags, line):
    result = CliRunner().invoke(app, ["chat", "--model", str(tmp_path), "--prompt", "hi", *flags])
    assert error_line(result) == line


def test_vllm_serve_refuses_the_device_map(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_API_KEY", "k")
    (tmp_path / "config.json").write_text("{}")
    args = ["serve", "--model", str(tmp_path), "--engine", "vllm", "--device-map", "auto", "--dry-run"]
    line = (
        "error: --device-map is for the built-in engine (--engine transformers); vllm splits a model over GPUs with "
        "--tensor-parallel-size N"
    )
    assert error_line(CliRunner().invoke(app, args)) == line


def test_eval_refuses_the_device_map_with_nproc(tmp_path):
    args = ["eval", "--model", str(tmp_path), "--adapter", str(tmp_path), "--device-map", "auto", "--nproc", "2"]
    assert error_line(CliRunner().invoke(app, args)).startswith(
        "error: eval: --device-map spreads one copy of the model over the GPUs in this process; it does not go with "
    )


def test_unknown_strategy_is_refused():
    with pytest.raises(UserError, match=r"^--device-map middle: expected one of auto, balanced, sequential$"):
        DeviceMap.parse("middle", None)


@needs_assets
def test_a_machine_without_gpus_refuses_the_device_map(tiny_qwen3_dir):
    args = ["chat", "--model", str(tiny_qwen3_dir), "--prompt", "hi", "--device-map", "auto"]
    assert error_line(CliRunner().invoke(app, args)) == (
        "error: --device-map auto spreads a model over GPUs and this machine has none; leave it out (the model runs "
        "on the CPU)"
    )


@needs_assets
def test_max_memory_naming_a_missing_gpu_is_refused(tiny_qwen3_dir, two_gpus):
    args = ["chat", "--model", str(tiny_qwen3_dir), "--prompt", "hi", "--device-map", "auto",
            "--max-memory", "1=20GiB,2=20GiB,cpu=4GiB"]  # fmt: skip
    assert error_line(CliRunner().invoke(app, args)) == "error: --max-memory: no GPU 2 here; this machine has 2, from 0"


def test_serve_auto_picks_the_builtin_engine_for_a_device_map(tmp_path, monkeypatch, capsys):
    import torch

    from tuneforge.serve import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")  # vllm installed: auto's choice
    (tmp_path / "config.json").write_text("{}")
    spec = resolve_spec(model=str(tmp_path))
    launch.launch(spec, dry_run=True)
    assert capsys.readouterr().out.startswith("vllm serve ")
    launch.launch(replace(spec, device_map=DeviceMap("auto")), dry_run=True)
    assert capsys.readouterr().out.startswith(f"built-in engine: serving {tmp_path} at http://")


def test_the_web_chat_tab_hands_its_device_map_choice_to_the_session(monkeypatch):
    """The Chat tab's Device map choice reaches open_session as --device-map does; a new choice reloads the run."""
    import tuneforge.infer.chat
    from tuneforge.webui import chat_tab

    calls = []
    monkeypatch.setattr(tuneforge.infer.chat, "open_session", lambda *a, **k: calls.append((a[2], k["device_map"])))
    monkeypatch.setattr(chat_tab, "_sessions", {})
    for choice in ("balanced", "balanced", chat_tab.ONE_DEVICE):
        chat_tab.session_for("runs/r", choice)
    assert calls == [("runs/r", DeviceMap("balanced")), ("runs/r", None)]
