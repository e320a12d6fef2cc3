"""The run folder as one object: run.json says what every artifact was made from; stale ones are rebuilt."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from test_export_merge import error_line, make_lora_run
from tiny_adapter import make_tiny_adapter
from typer.testing import CliRunner

from tuneforge import __version__
from tuneforge.cli import app
from tuneforge.config import (
    Config,
    DataConfig,
    DatasetConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    save_config,
    validate,
)
from tuneforge.errors import UserError
from tuneforge.rundir import Run, fingerprint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_chats(path: Path, answer: str) -> Path:
    """A messages-format dataset whose assistant always says `answer`."""
    rows = [{"messages": [{"role": "user", "content": f"问题 {i}"}, {"role": "assistant", "content": answer}]}
            for i in range(8)]  # fmt: skip
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def gguf_tensors(path: Path) -> dict[str, object]:
    import gguf
    import numpy as np

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.slow  # about 30-70 s on 2 cores: run in the suite's second step (scripts/test.sh)
def test_retrain_with_overwrite_then_export_ships_the_new_model(tmp_path, tiny_qwen3_dir):
    import numpy as np

    from tuneforge.export.gguf import export_gguf
    from tuneforge.export.merge import merge_adapter, run_sources
    from tuneforge.train.run import train

    run = tmp_path / "bot"

    def train_on(answer: str, **output) -> None:
        raw = {
            "model": {"name_or_path": str(tiny_qwen3_dir)},
            "data": {
                "datasets": [{"path": str(write_chats(tmp_path / f"{answer}.jsonl", answer))}],
                "max_length": 64,
                "cache_dir": str(tmp_path / "cache"),
            },  # fmt: skip
            "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 2, "learning_rate": 5e-2, "per_device_batch_size": 4, "save_steps": 100},
            "output": {"dir": str(run), **output},
        }
        train(validate(raw), log=lambda *_: None)

    def export() -> Path:
        result = CliRunner().invoke(app, ["export", "--run", str(run), "--to", "gguf,ollama", "--type", "f32"])
        assert result.exit_code == 0, result.output
        return run / "gguf" / "bot-f32.gguf"

    train_on("我是小一")
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["base"] == {"path": str(tiny_qwen3_dir.resolve())}
    assert manifest["method"] == {"type": "lora"}
    assert manifest["versions"]["tuneforge"] == __version__ and manifest["versions"]["peft"]
    assert len(manifest["chat_template_sha256"]) == 64
    first = gguf_tensors(export())
    recorded = json.loads((run / "run.json").read_text())["artifacts"]
    assert sorted(recorded) == ["adapter", "gguf/bot-f32.gguf", "merged", "ollama/bot-f32"]
    assert recorded["merged"]["made_from"]["dtype"] == "fp32"
    assert recorded["gguf/bot-f32.gguf"]["made_from"]["model"] == recorded["merged"]["fingerprint"]

    train_on("我是小二", overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [
        "adapter", "checkpoints", "config.yaml", "loss.png", "metrics.jsonl", "progress.json", "run.json",
        "summary.json"
    ]  # fmt: skip  # merged/, gguf/, ollama/ of the first run are gone
    assert sorted(json.loads((run / "run.json").read_text())["artifacts"]) == ["adapter"]
    second = gguf_tensors(export())

    fresh = merge_adapter(*run_sources(run), tmp_path / "fresh", dtype="fp32").out
    expected = gguf_tensors(export_gguf(fresh, tmp_path / "fresh.gguf", "f32"))
    assert second.keys() == expected.keys() == first.keys()
    assert all(np.array_equal(second[name], expected[name]) for name in expected)
    assert any(not np.array_equal(second[name], first[name]) for name in first)


def fake_hub_cache(cache: Path, source: Path, repo: str = "tiny-org/tiny-qwen3") -> Path:
    """A Hugging Face cache holding `source` as `repo` at COMMIT, laid out as huggingface_hub writes it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, folder / "snapshots" / COMMIT)
    return folder / "snapshots" / COMMIT


def run_config(run: Path, model: ModelConfig) -> Config:
    return Config(
        model=model, data=DataConfig(datasets=[DatasetConfig(path="d.jsonl")]), output=OutputConfig(dir=str(run))
    )


def test_manifest_records_the_resolved_commit_of_a_hub_base(tmp_path, tiny_qwen3_dir):
    fake_hub_cache(tmp_path / "hub", tiny_qwen3_dir)
    model = ModelConfig(name_or_path="tiny-org/tiny-qwen3", cache_dir=str(tmp_path / "hub"))
    save_config(run_config(tmp_path / "run", model), tmp_path / "run" / "config.yaml")
    run = Run.open(tmp_path / "run")
    assert run.manifest()["base"] == {"hub": "huggingface", "id": "tiny-org/tiny-qwen3", "revision": None,
                                      "commit": COMMIT}  # fmt: skip
    assert run.base_dir() == tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "snapshots" / COMMIT
    # Not in the cache: the commit is unknown, said as such rather than guessed.
    other = run_config(tmp_path / "r2", model.model_copy(update={"name_or_path": "tiny-org/absent"}))
    assert Run(tmp_path / "r2").describe(other, None)["base"]["commit"] is None


@pytest.fixture
def old_run(tmp_path, tiny_qwen3_dir) -> Path:
    """A LoRA run as tuneforge wrote it before run.json."""
    run = make_lora_run(tmp_path / "old", tiny_qwen3_dir)
    assert not (run / "run.json").exists()
    return run


def test_merge_export_chat_serve_take_a_run_without_run_json(old_run):
    runner = CliRunner()
    merged = runner.invoke(app, ["merge", "--run", str(old_run), "--dtype", "fp32"])
    assert merged.exit_code == 0 and "merged into" in merged.stdout, merged.output
    exported = runner.invoke(app, ["export", "--run", str(old_run), "--to", "gguf", "--type", "f32"])
    assert exported.exit_code == 0, exported.output
    assert f"using the model in {old_run / 'merged'}" in exported.stdout  # the fp32 merge just made is reused
    manifest = json.loads((old_run / "run.json").read_text())  # rebuilt from config.yaml, then recorded into
    assert manifest["base"]["path"] and sorted(manifest["artifacts"]) == ["gguf/old-f32.gguf", "merged"]
    chat = runner.invoke(app, ["chat", "--run", str(old_run), "--prompt", "hi", "--greedy", "--max-new-tokens", "2"])
    assert chat.exit_code == 0, chat.output
    serve = runner.invoke(app, ["serve", "--run", str(old_run), "--engine", "vllm", "--dry-run"])
    assert serve.exit_code == 0 and f"--lora-modules old={old_run / 'adapter'}" in serve.stdout, serve.output


@pytest.mark.parametrize("command", ["merge", "export", "chat", "serve"])
def test_a_folder_that_is_not_a_run_gets_one_line(tmp_path, command):
    (tmp_path / "notes").mkdir()
    result = CliRunner().invoke(
        app, [command, "--run", str(tmp_path / "notes"), *(["--dry-run"] * (command == "serve"))]
    )
    assert error_line(result) == (
        f"error: --run {tmp_path / 'notes'}: is not a tuneforge run folder (no config.yaml); "
        "pass the output.dir of a `tuneforge train` run"
    )


def test_k_quant_without_llama_cpp_is_refused_at_once_before_merging(old_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["export", "--run", str(old_run), "--type", "q4_k_m"])
    assert time.perf_counter() - start < 5
    assert "pip install 'tuneforge[llamacpp]'" in error_line(result)
    assert sorted(p.name for p in old_run.iterdir()) == ["adapter", "config.yaml"]


def test_every_export_requirement_is_checked_before_merging(tmp_path, tiny_qwen3_dir, monkeypatch):
    base = tmp_path / "llava"
    shutil.copytree(tiny_qwen3_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | {"model_type": "llava"}))
    (base / "chat_template.jinja").write_text("{{ messages }}")
    run = make_lora_run(tmp_path / "run", tiny_qwen3_dir)
    save_config(run_config(run, ModelConfig(name_or_path=str(base))), run / "config.yaml")
    (run / "adapter" / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(UserError) as err:
        from tuneforge.export.pipeline import export_run

        export_run(run, ["gguf", "ollama"], "f16")
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{base / 'config.json'}: model_type 'llava' cannot be exported to GGUF")
    assert lines[1].startswith(f"--to ollama: the run's ({run}) chat template is not one export ollama can restate")
    assert not (run / "merged").exists()

    (base / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(UserError, match=r"the export needs about 0\.\d GiB and the disk has 0\.0 GiB free"):
        export_run(run, ["gguf"], "f16")
    assert not (run / "merged").exists()


def test_a_changed_adapter_or_other_options_rebuild_merged_and_gguf(old_run, tiny_qwen3_dir):
    runner = CliRunner()
    assert runner.invoke(app, ["merge", "--run", str(old_run)]).exit_code == 0  # bf16
    again = runner.invoke(app, ["merge", "--run", str(old_run)])
    assert "merged already exists; pass --force to replace it (it is up to date" in error_line(again)

    f32 = runner.invoke(app, ["export", "--run", str(old_run), "--to", "gguf", "--type", "f32"])
    assert f32.exit_code == 0, f32.output
    assert f"rebuilding {old_run / 'merged'}: made from another dtype" in f32.stdout

    make_tiny_adapter(tiny_qwen3_dir, old_run / "adapter", seed=7)  # retrained by hand, run.json untouched
    retrained = runner.invoke(app, ["export", "--run", str(old_run), "--to", "gguf", "--type", "f32"])
    assert retrained.exit_code == 0, retrained.output
    assert f"rebuilding {old_run / 'merged'}: made from another adapter" in retrained.stdout
    assert "largest logit difference" in retrained.stdout

    same = runner.invoke(app, ["export", "--run", str(old_run), "--to", "gguf", "--type", "f32"])
    assert "old-f32.gguf already exists; pass --force to replace it (it is up to date" in error_line(same)


def test_python_m_tuneforge_train_needs_no_cli_layer(tmp_path):
    import subprocess

    code = (
        "import runpy, sys\n"
        "sys.argv = ['tuneforge.train', 'missing.yaml']\n"
        "try:\n    runpy.run_module('tuneforge.train', run_name='__main__')\n"
        "except SystemExit as exc:\n    print('typer' in sys.modules, 'tuneforge.cli' in sys.modules, exc.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.stdout == "False False 2\n", result.stderr
    assert result.stderr == "error: missing.yaml: config file not found\n"


def merged_files(run: Path) -> dict[str, tuple[int, int]]:
    """Inode and modification time of every file in RUN/merged: both change when a file is written again."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "merged").iterdir()}


def merged_entry(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["artifacts"]["merged"]


def test_an_explicit_onto_equal_to_the_default_reuses_merged(old_run):
    runner = CliRunner()
    assert runner.invoke(app, ["merge", "--run", str(old_run), "--dtype", "fp32"]).exit_code == 0
    files, entry = merged_files(old_run), merged_entry(old_run)
    assert entry["made_from"]["onto"] == "16bit" and entry["made_from"]["dtype"] == "fp32"

    again = runner.invoke(app, ["merge", "--run", str(old_run), "--dtype", "fp32", "--onto", "16bit"])
    assert "merged already exists; pass --force to replace it (it is up to date" in error_line(again)
    cli = ["export", "--run", str(old_run), "--to", "gguf", "--type", "f32", "--onto", "16bit"]
    exported = runner.invoke(app, cli)
    assert exported.exit_code == 0, exported.output
    assert f"using the model in {old_run / 'merged'}" in exported.stdout and "rebuilding" not in exported.stdout
    assert merged_files(old_run) == files and merged_entry(old_run) == entry


@pytest.mark.slow  # about 30-60 s on 2 cores: run in the suite's second step (scripts/test.sh)
def test_another_onto_rebuilds_merged(tmp_path, tiny_qwen3_dir):
    run = make_lora_run(tmp_path / "q", tiny_qwen3_dir, method=MethodConfig(type="qlora"))
    runner = CliRunner()
    first = runner.invoke(app, ["merge", "--run", str(run), "--dtype", "fp32"])
    assert first.exit_code == 0 and "--onto 16bit" in first.stdout, first.output
    files = merged_files(run)
    assert merged_entry(run)["made_from"]["onto"] == "16bit"

    same = runner.invoke(app, ["merge", "--run", str(run), "--dtype", "fp32", "--onto", "16bit"])
    assert "it is up to date" in error_line(same) and merged_files(run) == files
    other = runner.invoke(app, ["merge", "--run", str(run), "--dtype", "fp32", "--onto", "dequantized"])
    assert other.exit_code == 0, other.output
    assert f"rebuilding {run / 'merged'}: made from another onto" in other.stdout
    rewritten = merged_files(run)
    assert rewritten.keys() == files.keys() and all(rewritten[n][0] != files[n][0] for n in files)
    assert merged_entry(run)["made_from"]["onto"] == "dequantized"


@pytest.mark.slow  # about 30-60 s on 2 cores: run in the suite's second step (scripts/test.sh)
def test_a_resume_keeps_recorded_artifacts_and_overwrite_clears_them(tmp_path, tiny_qwen3_dir):
    from transformers import TrainerCallback

    from tuneforge.train.run import train

    run = tmp_path / "bot"
    data = write_chats(tmp_path / "chats.jsonl", "我是小一")

    def train_run(callbacks=(), overwrite: bool = False, **train_keys) -> None:
        raw = {
            "model": {"name_or_path": str(tiny_qwen3_dir)},
            "data": {"datasets": [{"path": str(data)}], "max_length": 64, "cache_dir": str(tmp_path / "cache")},
            "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
            "train": {"per_device_batch_size": 4, "save_steps": 100, **train_keys},
            "output": {"dir": str(run), "overwrite": overwrite},
        }
        train(validate(raw), callbacks=list(callbacks), log=lambda *_: None)

    class StopAtStep2(TrainerCallback):
        """A session that ends before the run does (as a kill would): the finished adapter stays what it was."""

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    train_run(max_steps=1)
    assert CliRunner().invoke(app, ["merge", "--run", str(run), "--dtype", "fp32"]).exit_code == 0
    recorded = json.loads((run / "run.json").read_text())["artifacts"]
    assert sorted(recorded) == ["adapter", "merged"]

    train_run([StopAtStep2()], max_steps=3, resume="auto")
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["artifacts"] == recorded
    assert manifest["config_fingerprint"] == Run(run).cfg.fingerprint()  # the header is the resumed config's
    again = CliRunner().invoke(app, ["merge", "--run", str(run), "--dtype", "fp32"])
    assert "it is up to date" in error_line(again)  # merged/ is still the merge of the adapter as it is

    train_run(max_steps=1, overwrite=True)
    assert sorted(json.loads((run / "run.json").read_text())["artifacts"]) == ["adapter"]
    assert not (run / "merged").exists()


def test_a_resume_refuses_a_continued_adapter_that_changed_since_the_run_started(tmp_path, tiny_qwen3_dir):
    from tuneforge.train.run import train

    sft = make_tiny_adapter(tiny_qwen3_dir, tmp_path / "sft", seed=0)
    run = tmp_path / "continued"
    data = write_chats(tmp_path / "chats.jsonl", "我是小一")

    def train_run(**train_keys) -> None:
        raw = {
            "model": {"name_or_path": str(tiny_qwen3_dir)},
            "data": {"datasets": [{"path": str(data)}], "max_length": 64, "cache_dir": str(tmp_path / "cache")},
            "method": {"type": "lora", "adapter": str(sft)},
            "train": {"per_device_batch_size": 4, "save_steps": 1, **train_keys},
            "output": {"dir": str(run)},
        }
        train(validate(raw), callbacks=[], log=lambda *_: None)

    train_run(max_steps=1)
    recorded = json.loads((run / "run.json").read_text())["method"]["adapter"]
    assert recorded == {"path": str(sft.resolve()), "fingerprint": fingerprint(sft)}

    shutil.copytree(sft, tmp_path / "sft-backup")  # as `cp -a` keeps it: same bytes, same modification times
    make_tiny_adapter(tiny_qwen3_dir, sft, seed=1)  # the SFT run retrained into the same folder
    with pytest.raises(UserError, match=r"^method\.adapter: .*sft changed since .*continued started from it"):
        train_run(max_steps=2, resume="auto")
    assert not (run / "checkpoints" / "checkpoint-2").exists()

    shutil.copytree(tmp_path / "sft-backup", sft, dirs_exist_ok=True)  # the old adapter put back: it goes on
    train_run(max_steps=2, resume="auto")
    assert (run / "checkpoints" / "checkpoint-2").is_dir()
    assert json.loads((run / "run.json").read_text())["method"]["adapter"] == recorded


@pytest.mark.parametrize("key", ["data.cache_dir", "model.cache_dir"])
def test_an_unwritable_cache_dir_is_one_line_naming_the_key(tmp_path, tiny_qwen3_dir, key):
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "cache"  # under a regular file: no one can write there, root included
    model = str(tiny_qwen3_dir) if key == "data.cache_dir" else "tiny-org/tiny-qwen3"  # a hub id uses the cache
    raw = {
        "model": {"name_or_path": model},
        "data": {"datasets": [{"path": str(write_chats(tmp_path / "chats.jsonl", "好"))}], "max_length": 64},
        "output": {"dir": str(make_lora_run(tmp_path / "run", tiny_qwen3_dir)), "overwrite": True},
    }
    save_config(validate(raw), tmp_path / "config.yaml")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "config.yaml"), f"{key}={bad}"])
    assert error_line(result) == (
        f"error: {key}: cannot write to {tmp_path / 'a-file'} (File exists); choose another path or fix its permissions"
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapter", "config.yaml"]  # overwrite waits


def test_overwrite_clears_everything_the_run_and_its_later_stages_wrote(old_run):
    later = ("merged/model.safetensors", "eval/smoke/report.json", "rewards.png", "gguf/old-f16.gguf", "progress.json")
    jobs = ("jobs/eval.json", "jobs/export.log", "jobs/train.yaml", "jobs/train.json", "jobs/train.log")
    for name in (*later, *jobs):
        (old_run / name).parent.mkdir(parents=True, exist_ok=True)
        (old_run / name).write_text("old")
    (old_run / "notes.txt").write_text("mine")
    Run(old_run).clear()
    assert sorted(p.name for p in old_run.iterdir()) == ["config.yaml", "jobs", "notes.txt"]
    # The web UI's records of the old run's eval and export jobs go; the train job doing the clearing keeps its own.
    assert sorted(p.name for p in (old_run / "jobs").iterdir()) == ["train.json", "train.log", "train.yaml"]
