"""`tuneforge bundle` refusals (one line, before any download) and `bundle verify` on a bundle that is broken."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from tuneforge.bundle import wheels
from tuneforge.bundle.verify import MANIFEST, file_table, verify_bundle
from tuneforge.bundle.wheels import Target
from tuneforge.errors import UserError


def tuneforge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, **kwargs)


def test_target_takes_older_manylinux_wheels_and_the_stable_abi():
    target = Target("3.11", "manylinux_2_28_x86_64", "cpu")
    tags = target.platform_tags()
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux2010_x86_64"} <= set(tags)
    assert "manylinux_2_31_x86_64" not in tags and "linux_x86_64" not in tags
    assert target.takes("cp311", "cp311", "manylinux_2_17_x86_64")
    assert target.takes("cp38", "abi3", "manylinux2014_x86_64") and target.takes("py3", "none", "any")
    assert not target.takes("cp312", "cp312", "manylinux_2_17_x86_64")
    assert not target.takes("cp311", "cp311", "manylinux_2_34_x86_64")  # needs a newer glibc than the target's
    assert not target.takes("cp311", "cp311", "manylinux_2_28_aarch64")


def test_a_model_missing_from_the_caches_is_refused_in_one_line_before_any_download(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "MODELSCOPE_CACHE": str(tmp_path / "ms")}
    done = tuneforge("bundle", "--out", str(tmp_path / "b"), "--model", "nobody/none", env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: model nobody/none: not a folder and not in the Hugging Face cache ({tmp_path / 'hf'}) or the "
        f"ModelScope cache ({tmp_path / 'ms'}): run `hf download nobody/none` (or `modelscope download --model "
        "nobody/none`) while online, or pass the model's folder"
    ]
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("unshare -m (a mount namespace, to mount a 1 MiB tmpfs) is not available here")
    small = tmp_path / "small"
    small.mkdir()
    script = f"mount -t tmpfs -o size=1m tmpfs {small} && {sys.executable} -m tuneforge.cli bundle --out {small}/b"
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: --out {small}/b: not enough disk for the bundle: about 1.0 GiB needed, 0.0 GiB free; free space "
        "there or pick another --out"
    ]


def test_a_requirement_without_a_wheel_for_the_target_is_named(tmp_path):
    try:
        urllib.request.urlopen(wheels.INDEX + "/pip/", timeout=10).close()
    except OSError as exc:
        pytest.skip(f"the package index is not reachable ({exc}): the refusal asks it which platforms have wheels")
    target = Target("3.11", "manylinux_2_28_x86_64", "cpu")
    constraints = ROOT / "constraints.txt"
    pinned = wheels.pin(constraints, "llama_cpp_python")
    with pytest.raises(UserError) as refused:  # PyPI has only the sdist of llama-cpp-python
        wheels.download([f"llama-cpp-python=={pinned}"], constraints, target, tmp_path, ["--no-deps"])
    assert str(refused.value) == (
        f"no wheel of llama-cpp-python=={pinned} for CPython 3.11 on manylinux_2_28_x86_64; the index has only its "
        "source: build a wheel on the target"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_pure_python_source_only_requirement_is_built_into_a_wheel_any_target_installs(tmp_path):
    """jieba (the eval extra) publishes only its source: the bundle carries a py3-none-any wheel built from it, which
    pip then takes for a target other than this machine."""
    try:
        urllib.request.urlopen(wheels.INDEX + "/pip/", timeout=10).close()
    except OSError as exc:
        pytest.skip(f"the package index is not reachable ({exc}): the source archive is fetched from it")
    constraints = ROOT / "constraints.txt"
    pinned = wheels.pin(constraints, "jieba")
    assert wheels.platforms_with_wheels("jieba", pinned) == []  # still source-only: otherwise this tests nothing
    target = Target("3.12", "manylinux_2_17_aarch64", "cpu")  # not this machine
    wheels.download([f"jieba=={pinned}"], constraints, target, tmp_path, ["--no-deps"])
    assert [p.name for p in tmp_path.iterdir()] == [f"jieba-{pinned}-py3-none-any.whl"]
    with zipfile.ZipFile(tmp_path / f"jieba-{pinned}-py3-none-any.whl") as wheel:
        assert "jieba/__init__.py" in wheel.namelist() and "jieba/dict.txt" in wheel.namelist()


@pytest.fixture(scope="module")
def own_wheel(tmp_path_factory) -> Path:
    return wheels.build_own_wheel(tmp_path_factory.mktemp("wheel"))


def _bundle_of(folder: Path, wheel: Path) -> Path:
    """A bundle by hand: tuneforge's wheel alone (none of its requirements), and its manifest."""
    (folder / "wheels").mkdir(parents=True)
    shutil.copy2(wheel, folder / "wheels")
    shutil.copy2(ROOT / "constraints.txt", folder)
    (folder / "requirements.txt").write_text(f"tuneforge=={wheel.name.split('-')[1]}\n")
    target = {"python": "3.11", "platform": "manylinux_2_28_x86_64", "torch": "cpu", "torch_index": None}
    (folder / MANIFEST).write_text(json.dumps({"target": target, "files": file_table(folder)}))
    return folder


def test_verify_names_damaged_and_missing_files(own_wheel, tmp_path):
    bundle = _bundle_of(tmp_path / "b", own_wheel)
    (bundle / "requirements.txt").write_text("tuneforge==9.9.9\n")  # as long as the real one: only sha256 tells
    (bundle / "constraints.txt").unlink()
    (bundle / "install.sh").write_text("")  # not in the manifest: not checked
    assert verify_bundle(bundle) == (
        [
            "constraints.txt: missing",
            "requirements.txt: sha256 differs from the manifest's (the file changed or is damaged)",
        ],
        0,
    )
    (bundle / "requirements.txt").write_text("tuneforge==0.1.0 \n")
    assert verify_bundle(bundle)[0][1] == "requirements.txt: 18 bytes, the manifest says 17"


def test_verify_finds_requirements_the_bundle_cannot_meet(own_wheel, tmp_path):
    bundle = _bundle_of(tmp_path / "b", own_wheel)
    problems, count = verify_bundle(bundle)
    assert count == 0 and len(problems) == 1
    assert problems[0].startswith(f"requirements do not resolve from {bundle / 'wheels'}: ERROR: ")
    verified = tuneforge("bundle", "verify", str(bundle))
    assert verified.returncode == 1 and verified.stderr.startswith("problem: requirements do not resolve")
