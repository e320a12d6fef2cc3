"""A bundle's manifest (every file's sha256 and size) and `tuneforge bundle verify`: files intact, requirements met."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tuneforge.bundle.wheels import Target
from tuneforge.errors import UserError

MANIFEST = "manifest.json"
# Only the bundle answers: pip's own configuration (an index, find-links of the build machine) is not read.
PIP_ISOLATED = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1"}


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def file_table(bundle: Path) -> dict[str, dict[str, int | str]]:
    """Every file under the bundle but the manifest: relative path → {sha256, size}."""
    return {
        path.relative_to(bundle).as_posix(): {"sha256": sha256(path), "size": path.stat().st_size}
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.relative_to(bundle).as_posix() != MANIFEST
    }


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest.json; a one-line refusal if there is none."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: not found; {bundle} is not a bundle made by `tuneforge bundle`")
    return json.loads(path.read_text(encoding="utf-8"))


def damaged_files(bundle: Path, manifest: dict) -> list[str]:
    """Files missing, or of another size or sha256 than the manifest says: one line each."""
    problems = []
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest's (the file changed or is damaged)")
    return problems


def unresolved(bundle: Path, manifest: dict) -> tuple[list[str], int]:
    """pip's dry-run install of the bundle's requirements from its wheels alone, for its target: problems, count."""
    target = Target(**manifest["target"])
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            str(report),
            "--find-links",
            str(bundle / "wheels"),
            "--target",
            str(Path(tmp) / "site"),
            *target.pip_flags(),
            "-c",
            str(bundle / "constraints.txt"),
            "-r",
            str(bundle / "requirements.txt"),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=_isolated_env())
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            return [f"requirements do not resolve from {bundle / 'wheels'}: {' '.join(errors)[:500]}"], 0
        install = json.loads(report.read_text(encoding="utf-8"))["install"]
    wheels = (bundle / "wheels").resolve().as_uri()
    outside = [item["download_info"]["url"] for item in install if not item["download_info"]["url"].startswith(wheels)]
    return [f"{url}: resolved from outside the bundle" for url in outside], len(install)


def verify_bundle(bundle: Path) -> tuple[list[str], int]:
    """All problems of the bundle (damaged files, requirements its wheels do not meet) and the wheels it installs."""
    manifest = read_manifest(bundle)
    problems = damaged_files(bundle, manifest)
    if problems:
        return problems, 0
    return unresolved(bundle, manifest)


def _isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, **PIP_ISOLATED}
