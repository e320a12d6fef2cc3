"""bench/gpu_check.py on the CPU with tiny shapes: every step runs and writes its result, so the GPU run will not
crash on arrival for a reason the CPU can show (a flag, an import, a missing key)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, needs_assets

# The keys the docs read off each step's result (docs/performance.md, GPU check).
RESULT_KEYS = {
    "train_throughput.json": {"command", "environment", "results"},
    "qlora_memory.json": {"command", "environment", "job", "results"},
    "preference_memory.json": {"results", "dpo_over_sft", "target", "environment"},
    "estimate_accuracy.json": {"runs", "results"},
    "generate_batch.json": {"command", "machine", "levels"},
    "grpo.json": {"command", "environment", "results", "ratios"},
}


@pytest.mark.slow  # 240 s on 2 cores (2026-12-07): five benches, a dozen fresh Python processes
@needs_assets
def test_tiny_gpu_check_runs_every_step(tmp_path, monkeypatch):
    # GRPO is the test below (it writes no shared base); the default run is every step, in this order.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    shared = ["throughput", "qlora", "preference", "estimate", "generate"]
    every = [step.name for step in gpu_check.steps("cpu", True, tmp_path / "c.json", tmp_path / "base")]
    assert every == ["base", *shared, "grpo"]
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--out-dir",
            str(tmp_path),
            "--only",
            *shared,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["versions"]["torch"] and summary["versions"]["transformers"]
    assert [s["step"] for s in summary["steps"]] == ["base", *shared]
    base, *benches = summary["steps"]
    assert (base["status"], base["exit_status"], base["result"]) == ("ok", 0, "(the shared base)")
    for step in benches:
        assert (step["status"], step["exit_status"]) == ("ok", 0), step
        # Every model step trains on the one base written first; generate runs the tests' tiny model.
        assert step["command"].endswith(" --base " + base["command"].split(" --save-base ")[1]) == (
            step["step"] != "generate"
        )
        result = json.loads((tmp_path / step["result"]).read_text())
        assert RESULT_KEYS[step["result"]] <= result.keys(), step["result"]
        assert step["command"].startswith(f"python bench/{step['result'].removesuffix('.json')}.py ")
    assert len(list(tmp_path.iterdir())) == 6  # five results and the summary (with grpo's, 7: the device returns 8)
    assert "| throughput | ok |" in proc.stdout


@pytest.mark.slow  # two GRPO workers (tuneforge, TRL) on the tiny shape: about 60 s on 2 shared cores
@needs_assets
def test_tiny_gpu_check_runs_the_grpo_step_alone_without_the_shared_base(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--only",
            "grpo",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (step,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]  # no base: GRPO writes its own
    assert (step["step"], step["status"], step["result"]) == ("grpo", "ok", "grpo.json")
    assert step["command"] == (
        "python bench/grpo.py --device cpu --prompts 2 --batch 2 --generations 2 --completion 4 --steps 2 "
        "--generation transformers"
    )
    result = json.loads((tmp_path / "grpo.json").read_text())
    assert [r["side"] for r in result["results"]] == ["trl", "tuneforge"]
    for row in result["results"]:
        assert (row["generation"], row["completion"], row["batch"], len(row["step_times_s"])) == (
            "transformers",
            4,
            2,
            2,
        )
    assert result["ratios"]["memory"] > 0 and result["ratios"]["speed"] > 0


@pytest.mark.parametrize(("vllm", "sampler", "min_s"), [(True, "vllm", 180), (False, "transformers", 90)])
def test_the_gpu_grpo_step_samples_with_vllm_where_importable(monkeypatch, tmp_path, vllm, sampler, min_s):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda name: (vllm or None) if name == "vllm" else real(name)
    )
    grpo = gpu_check.steps("cuda", False, tmp_path / "c.json", tmp_path / "base")[-1]
    assert (grpo.name, grpo.result, grpo.min_s) == ("grpo", "grpo.json", min_s)
    assert grpo.args[grpo.args.index("--generation") + 1] == sampler and "--base" not in grpo.args
    assert grpo.args[grpo.args.index("--shape") + 1] == "0.6B"
    tiny = gpu_check.steps("cuda", True, tmp_path / "c.json", tmp_path / "base")[-1]
    assert tiny.args[tiny.args.index("--generation") + 1] == sampler


def test_timed_out_and_failed_steps_are_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fail.py").write_text("import sys\nprint('no GPU')\nsys.exit(3)\n")
    # Leaves a file in its TMPDIR, as a bench killed mid-run leaves its random base.
    (tmp_path / "bench" / "sleep.py").write_text(
        "import os, pathlib, time\npathlib.Path(os.environ['TMPDIR'], 'base').write_text('x')\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    (tmp_path / "bench" / "write.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[sys.argv.index('--out') + 1]).write_text('{}')\n"
    )
    monkeypatch.setattr(gpu_check, "BENCH", tmp_path / "bench")
    timed_out = gpu_check.run_step(
        gpu_check.Step("sleep", "sleep.json", ["sleep.py"], 1), tmp_path, timeout_s=1, scratch=tmp_path / "s1"
    )
    assert (timed_out["status"], timed_out["exit_status"]) == ("timed out", None)
    assert timed_out["reason"] == "timed out after 1 s" and timed_out["output_tail"] == ["started"]
    assert timed_out["wall_s"] < 10 and not (tmp_path / "s1").exists()
    failed = gpu_check.run_step(
        gpu_check.Step("fail", "fail.json", ["fail.py"], 30), tmp_path, timeout_s=30, scratch=tmp_path / "s2"
    )
    assert (failed["status"], failed["exit_status"], failed["reason"]) == ("failed", 3, "exit status 3")
    assert failed["output_tail"] == ["no GPU"] and "result" not in failed
    done = gpu_check.run_step(
        gpu_check.Step("write", "write.json", ["write.py"], 30), tmp_path, timeout_s=30, scratch=tmp_path / "s3"
    )
    assert (done["status"], done["exit_status"], done["result"]) == ("ok", 0, "write.json")


def fake_wheel(path, files: dict[str, bytes], requires: list[str]) -> None:
    """A wheel holding `files`, a METADATA with `requires`, and a RECORD listing them all."""
    metadata = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {**files, "demo-1.0.dist-info/METADATA": metadata.encode()}
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items()) + "demo-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**files, "demo-1.0.dist-info/RECORD": record.encode()}.items():
            archive.writestr(name, data)


def test_slim_keeps_only_the_matching_native_libraries_and_their_record_lines(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import gpu_wheels

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    libs = ["demo/libdemo_cuda118.so", "demo/libdemo_cuda130.so", "demo/libdemo_rocm64.so"]
    fake_wheel(wheel, {"demo/__init__.py": b"x = 1\n", **dict.fromkeys(libs, b"\0" * 100)}, [])
    gpu_wheels.slim(wheel, "cuda13")
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(archive.namelist())
        record = archive.read("demo-1.0.dist-info/RECORD").decode().splitlines()
    kept = ["demo-1.0.dist-info/METADATA", "demo-1.0.dist-info/RECORD", "demo/__init__.py", "demo/libdemo_cuda130.so"]
    assert names == kept
    assert sorted(line.split(",")[0] for line in record) == kept


def test_check_names_a_need_neither_carried_nor_in_the_image(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import gpu_wheels

    fake_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {}, ["numpy>=1.17", "torch>=2.12", "nowhere-pkg"])
    with pytest.raises(SystemExit) as exit_:
        gpu_wheels.check(tmp_path)
    assert str(exit_.value).splitlines() == [
        "demo-1.0-py3-none-any.whl needs torch>=2.12: image has 2.11.0",
        "demo-1.0-py3-none-any.whl needs nowhere-pkg: neither carried nor in the image",
    ]
    assert capsys.readouterr().out == "demo-1.0-py3-none-any.whl: numpy>=1.17 from the image (2.5.2)\n"
