"""Inference runs a model as it was trained: the thinking mode its run trained in, a QLoRA run's base quantized with
its recorded settings; flags override both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_assets
from tiny_adapter import make_tiny_adapter

from tuneforge.config import MethodConfig, save_config, validate
from tuneforge.data.render import trained_modes
from tuneforge.infer.spec import resolve_spec, thinking_for
from tuneforge.rundir import Run


@pytest.mark.parametrize(
    "thinking, with_reasoning, without, modes",
    [
        ("auto", 0, 5, ["off"]),  # the empty think block on the prompt side, as enable_thinking=False renders it
        ("auto", 5, 0, ["on"]),
        ("auto", 2, 3, ["on", "off"]),
        ("off", 5, 0, ["off"]),  # reasoning dropped: every sample trains behind the empty block
        ("off", 2, 3, ["off"]),
        ("keep_empty", 0, 5, ["on"]),  # the empty block is trained output after a thinking-mode prompt
        ("keep_empty", 2, 3, ["on"]),
    ],
)
def test_trained_modes_follow_data_thinking_and_the_data(thinking, with_reasoning, without, modes):
    assert trained_modes(thinking, with_reasoning, without) == modes


def test_the_flag_wins_then_the_trained_mode_then_the_template():
    assert thinking_for(True, False, "mybot") == (True, "thinking on, as asked")
    assert thinking_for(False, None, "mybot") == (False, "thinking off, as asked")
    assert thinking_for(None, False, "mybot") == (False, "thinking off: the mode mybot trained in")
    assert thinking_for(None, True, "mybot") == (True, "thinking on: the mode mybot trained in")
    assert thinking_for(None, None, "mybot") == (None, "thinking: the chat template's default")


def make_run(folder: Path, base: str, method: dict, modes: list[str] | None, adapter_from: Path | None = None) -> Path:
    """A finished-looking run folder: config.yaml, run.json (with the trained modes) and an adapter."""
    cfg = validate(
        {
            "model": {"name_or_path": base},
            "data": {"datasets": [{"path": "d.json"}]},
            "method": method,
            "output": {"dir": str(folder)},
        }
    )
    save_config(cfg, folder / "config.yaml")
    run = Run(folder)
    run.start(cfg, None, resumed=False)
    if modes is not None:
        run.record_thinking("auto", modes)
    if adapter_from is not None:
        make_tiny_adapter(adapter_from, run.adapter)
    else:
        run.adapter.mkdir()
        (run.adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return folder


def test_a_qlora_run_loads_its_base_with_the_recorded_settings_unless_told_otherwise(tmp_path):
    qlora = {"type": "qlora", "bits": 4, "quant_type": "fp4", "double_quant": False, "quant_storage": "uint8"}
    run = make_run(tmp_path / "qbot", "Qwen/Qwen3-8B", qlora, ["off"])
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["method"]["quantization"] == {k: v for k, v in qlora.items() if k != "type"}
    assert manifest["thinking"] == {"data.thinking": "auto", "modes": ["off"]}

    recorded = MethodConfig(**qlora)
    assert resolve_spec(run=run).quantize == recorded
    assert resolve_spec(run=run, quantize=True).quantize == recorded  # 4 bit: the run's own settings
    assert resolve_spec(run=run, quantize=False).quantize is None
    spec = resolve_spec(run=run)
    assert spec.thinking == {"qbot": False}  # the adapter's served name; the base keeps the template's default

    lora = make_run(tmp_path / "lbot", "Qwen/Qwen3-8B", {"type": "lora"}, ["on", "off"])
    assert resolve_spec(run=lora).quantize is None and resolve_spec(run=lora).thinking == {}
    assert resolve_spec(run=lora, quantize=True).quantize == MethodConfig(type="qlora")  # nf4, double quant
    assert resolve_spec(model="Qwen/Qwen3-8B", quantize=True).quantize == MethodConfig(type="qlora")
    assert resolve_spec(model="Qwen/Qwen3-8B").quantize is None


@needs_assets
def test_chat_defaults_to_the_mode_the_run_trained_in_and_the_flag_overrides(tiny_qwen3_dir, tmp_path):
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.chat import open_session

    run = make_run(tmp_path / "mybot", str(tiny_qwen3_dir), {"type": "lora"}, ["off"], adapter_from=tiny_qwen3_dir)
    greedy = SamplingParams(max_new_tokens=2, temperature=0)
    session = open_session(None, None, str(run), greedy)
    assert (session.think, session.thinking_note) == (False, "thinking off: the mode mybot trained in")
    prompts = []
    chat = session.engine.chat

    def recording(messages, *args, **kwargs):
        prompts.append(session.engine.render(messages, enable_thinking=kwargs["enable_thinking"]))
        return chat(messages, *args, **kwargs)

    session.engine.chat = recording
    session.ask([], "你是谁？")
    assert prompts == ["<|im_start|>user\n你是谁？<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"]

    asked = open_session(None, None, str(run), greedy, think=True)
    assert (asked.think, asked.thinking_note) == (True, "thinking on, as asked")


def test_the_web_chat_tab_ticks_thinking_as_the_run_trained(tmp_path):
    pytest.importorskip("gradio")
    from tuneforge.webui.chat_tab import thinking_default

    on = make_run(tmp_path / "reasoner", "Qwen/Qwen3-8B", {"type": "lora"}, ["on"])
    off = make_run(tmp_path / "plain", "Qwen/Qwen3-8B", {"type": "lora"}, ["off"])
    both = make_run(tmp_path / "mixed", "Qwen/Qwen3-8B", {"type": "lora"}, ["on", "off"])
    assert thinking_default(str(on)) == (True, "thinking on: the mode reasoner trained in")
    assert thinking_default(str(off)) == (False, "thinking off: the mode plain trained in")
    unknown = (False, "thinking off: the run does not record one mode it trained in")
    assert thinking_default(str(both)) == unknown and thinking_default(None) == unknown
