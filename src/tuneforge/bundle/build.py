"""`tuneforge bundle`: one folder with everything an offline machine needs (wheels, models, data, install.sh)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tuneforge.bundle import content, wheels
from tuneforge.bundle.verify import MANIFEST, file_table
from tuneforge.bundle.wheels import Target
from tuneforge.errors import UserError
from tuneforge.io import atomic_dir, atomic_write_json, check_writable

# What the wheels take, by torch build (measured: CPU with [serve,webui] 0.36 GiB; a CUDA torch with its nvidia-*
# wheels about 4 GiB), with room to spare: the disk check runs before anything downloads.
WHEEL_BYTES = {"cpu": 2**30, "default": 6 * 2**30}
INSTALL_SH = """#!/bin/sh
# Installs this tuneforge bundle with no network: sh install.sh [VENV]   (default VENV: ./tuneforge-venv)
# then runs `tuneforge env --offline-check` in it.
# Only the bundle's wheels are used (pip's index and configuration are not read).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${{1:-tuneforge-venv}}
PYTHON=${{PYTHON:-python3}}
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "{python}" ]; then
  echo "install.sh: the bundle's wheels are for Python {python}, $PYTHON is $have: run PYTHON=python{python} sh $0" >&2
  exit 2
fi
"$PYTHON" -m venv "$VENV"
# No PIP_* variable of this shell (a PIP_FIND_LINKS folder with torch+cpu would win over the bundle's CUDA torch).
for variable in $(env | sed -n 's/^\\(PIP_[A-Z_]*\\)=.*/\\1/p'); do unset "$variable"; done
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q \\
  --no-compile --find-links "$HERE/wheels" -c "$HERE/constraints.txt" -r "$HERE/requirements.txt"
# Every session in this venv is offline, and finds the bundle's models and datasets by their hub ids.
cat >> "$VENV/bin/activate" <<ENV
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_CACHE="$HERE/{hf_cache}"
ENV
. "$VENV/bin/activate"
# TUNEFORGE_INSTALL_CHECK=0 leaves the check for later (docker build: its /dev/shm and GPUs are not the run's).
if [ "${{TUNEFORGE_INSTALL_CHECK:-1}}" != 0 ]; then
  tuneforge env --offline-check{models}
fi
echo "installed into $VENV: . $VENV/bin/activate (sets HF_HUB_OFFLINE=1 and HF_HUB_CACHE=$HERE/{hf_cache})"
"""


def build_bundle(
    out: Path,
    target: Target,
    extras: list[str],
    models: list[str],
    datasets: list[str],
    files: list[tuple[Path, str]],
    log: Callable[[str], None] = print,
) -> dict:
    """Write the bundle into `out` (complete or not at all) and return its manifest."""
    check_writable(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: not empty; pass a new folder (a bundle is made whole or not at all)")
    constraints = wheels.project_root() / "constraints.txt"
    _check_disk(out, target, models + datasets + [str(path) for path, _ in files])
    started = time.monotonic()
    with atomic_dir(out) as tmp:
        # Models and data first: a model missing from the cache is refused before gigabytes of wheels download.
        bundled_models = [content.copy_model(model, tmp) for model in models]
        bundled_data = [content.copy_dataset(dataset, tmp) for dataset in datasets]
        bundled_files = [content.copy_tree(path, tmp, under) for path, under in files]
        log(f"models and data copied ({time.monotonic() - started:.0f} s)")
        folder = tmp / "wheels"
        folder.mkdir()
        own = wheels.build_own_wheel(folder)
        torch, torch_flags = wheels.torch_requirement(constraints, target)
        # torch alone from its index first: pip asks every index for every package, and a torch index that does not
        # answer (a mirror-only network) would cost its retries on each of the ~80 requirements.
        wheels.download([torch], constraints, target, folder, [*torch_flags, "--no-deps"])
        extra = f"[{','.join(extras)}]" if extras else ""
        # That very file is the requirement from here on: no other index's torch of the same version replaces it.
        torch_wheel = str(next(folder.glob("torch-*.whl")))
        wheels.download([f"{own}{extra}", torch_wheel], constraints, target, folder, [])
        count = len(list(folder.glob("*.whl")))
        log(f"{count} wheels downloaded for {target.platform} ({time.monotonic() - started:.0f} s)")
        shutil.copy2(constraints, tmp / "constraints.txt")
        version = own.name.split("-")[1]
        (tmp / "requirements.txt").write_text(f"tuneforge{extra}=={version}\n{torch}\n", encoding="utf-8")
        checks = "".join(f" \\\n  --model {m}" for m in bundled_models)
        script = INSTALL_SH.format(python=target.python, hf_cache=content.HF_CACHE, models=checks)
        (tmp / "install.sh").write_text(script, encoding="utf-8")
        (tmp / "install.sh").chmod(0o755)
        _readable_by_all(tmp)
        manifest = {
            "tuneforge": version,
            "target": asdict(target),
            "extras": extras,
            "models": dict(zip(models, bundled_models)),
            "datasets": dict(zip(datasets, bundled_data)),
            "carried": dict(zip([str(path) for path, _ in files], bundled_files)),
            "files": file_table(tmp),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _readable_by_all(bundle: Path) -> None:
    # Some writers save weights as 0600 (safetensors through an atomic write); the bundle is read by another user on
    # the target (an image's non-root user, a colleague's account), so everything in it is made readable.
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _check_disk(out: Path, target: Target, sources: list[str]) -> None:
    need = content.size_of(sources) + WHEEL_BYTES.get(target.torch, WHEEL_BYTES["default"])
    probe = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"--out {out}: not enough disk for the bundle: about {need / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB free; free space there or pick another --out"
        )
