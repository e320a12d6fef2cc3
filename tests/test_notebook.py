"""The notebook API in a real Jupyter kernel (nbclient + ipykernel): train, chat, eval, merge and export."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import DATA_DIR, needs_assets

from tuneforge.train.notebook import apply_keywords


def test_keywords_merge_sections_and_set_dotted_keys():
    raw = {"train": {"epochs": 3, "learning_rate": 1e-4}, "output": {"dir": "a"}}
    out = apply_keywords(raw, {"train": {"max_steps": 2}, "output__dir": "b", "distributed": {"nproc": 1}})
    assert out == {
        "train": {"epochs": 3, "learning_rate": 1e-4, "max_steps": 2},
        "output": {"dir": "b"},
        "distributed": {"nproc": 1},
    }


def test_import_tuneforge_stays_light():
    import subprocess
    import sys

    code = "import sys, tuneforge; assert callable(tuneforge.train); "
    code += "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _cell_text(cell, streams=("stdout", "stderr")) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output["name"] in streams:
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@needs_assets
@pytest.mark.slow  # a kernel starts torch, trains 2 steps, evaluates, merges, writes a GGUF: 2-5 min on 2 shared cores
def test_notebook_trains_chats_merges_and_exports(tiny_qwen3_dir, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    config = {
        "model": {"name_or_path": str(tiny_qwen3_dir)},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "Nb", "author": "Lab"}}],
            "max_length": 256,
            "val_size": 8,  # the self-cognition suite's held-out loss reads the run's validation split
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"epochs": 1, "per_device_batch_size": 4, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "unused")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cells = [
        "import tuneforge\n"
        f"run = tuneforge.train('config.yaml', train={{'max_steps': 2}}, output__dir={str(tmp_path / 'run')!r})\n"
        "print('run at', run.path)",
        "answer = run.chat('你是谁？', max_new_tokens=8)\nprint(type(answer).__name__, len(answer) > 0)",
        "ev = run.eval(suite='self-cognition', think=False, limit=2)\n"
        "print(ev.out == run.run.eval_dir / 'self-cognition', len(ev.rows) > 0)",
        "merged = run.merge()\nprint(sorted(p.name for p in merged.iterdir() if p.suffix == '.safetensors'))",
        "result = run.export(to='gguf', qtype='f16')\nprint(result.gguf.name, result.gguf.stat().st_size > 0)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this environment (PYTHONPATH included)
        for key, value in env.items():
            mp.setenv(key, value)
        client.execute()
    train_out = _cell_text(notebook.cells[0])
    # what the cells print (library warnings go to stderr)
    chat_out, eval_out, merge_out, export_out = (_cell_text(c, ("stdout",)) for c in notebook.cells[1:])
    assert f"run at {tmp_path / 'run'}" in train_out
    assert "loss" in train_out  # the progress shows in the notebook
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2
    assert chat_out.strip() == "str True"
    assert eval_out.strip().endswith("True True")  # after the eval's own progress lines
    assert merge_out.strip() == "['model.safetensors']"
    assert export_out.strip().endswith(".gguf True")
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()
