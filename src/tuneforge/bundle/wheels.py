"""The wheels of a bundle: tuneforge's own, and pip's download of its requirements for the target platform."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from tuneforge.errors import UserError

# Older manylinux names for the same glibc floors (PEP 600): a wheel tagged only manylinux2014 runs on glibc 2.17+.
LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
INDEX = "https://pypi.org/simple"  # PEP 691's JSON listing: every file of a project, so every platform built
SOURCE_ONLY = "the index has only its source: build a wheel on the target"
# What a source archive compiles: a wheel built from it here would run on this machine's platform only.
COMPILED = re.compile(r"\.(c|cc|cpp|cxx|h|pyx|rs|f|f90|cu)$|(^|/)(CMakeLists\.txt|meson\.build|Cargo\.toml)$")


@dataclass(frozen=True)
class Target:
    """The machine a bundle is for: CPython version, platform tag, torch build (cpu, cu128, ... or pypi)."""

    python: str
    platform: str
    torch: str
    torch_index: str | None = None  # where that torch build is found: an index URL or a folder of wheels

    def platform_tags(self) -> list[str]:
        """Every platform tag a wheel may carry to install on the target, newest first."""
        found = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", self.platform)
        if not found:
            return [self.platform]
        floor, arch = int(found[1]), found[2]
        tags = []
        for minor in range(floor, 4, -1):
            tags.append(f"manylinux_2_{minor}_{arch}")
            if minor in LEGACY:
                tags.append(f"{LEGACY[minor]}_{arch}")
        return tags

    def takes(self, interpreter: str, abi: str, platform: str) -> bool:
        """Whether a wheel tagged interpreter-abi-platform installs on the target."""
        if platform != "any" and platform not in self.platform_tags():
            return False
        version = self.python.replace(".", "")
        if abi == "abi3":  # the stable ABI: built for cp3X, runs on every later CPython 3
            return interpreter.startswith("cp3") and int(interpreter[3:]) <= int(version[1:])
        return interpreter in (f"cp{version}", "py3", f"py{version}", "py2.py3")

    def pip_flags(self) -> list[str]:
        """pip's options that make it pick wheels for the target rather than for this machine."""
        flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in self.platform_tags():
            flags += ["--platform", tag]
        return flags


def this_machine() -> Target:
    """The target that is this machine: its Python, and the newest manylinux tag its glibc takes."""
    from packaging.tags import platform_tags

    platform = next((t for t in platform_tags() if t.startswith("manylinux_")), next(iter(platform_tags())))
    return Target(f"{sys.version_info.major}.{sys.version_info.minor}", platform, "cpu")


def project_root() -> Path:
    """The source checkout tuneforge runs from (its wheel is built there); a one-line refusal otherwise."""
    import tuneforge

    root = Path(tuneforge.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise UserError(
            f"tuneforge runs from {root}, not from a source checkout: `tuneforge bundle` builds tuneforge's wheel "
            "from its sources; run it from a clone (pip install -e .)"
        )
    return root


def build_own_wheel(out: Path) -> Path:
    """tuneforge's wheel, built from a clean copy of the sources (a stale build/ folder would leak old modules)."""
    root = project_root()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
        shutil.copytree(root / "src", source / "src", ignore=ignore)
        _pip(["wheel", "-q", "--no-deps", "-w", str(out), str(source)], "building tuneforge's wheel")
    return next(out.glob("tuneforge-*.whl"))


def torch_requirement(constraints: Path, target: Target) -> tuple[str, list[str]]:
    """The torch requirement for the target's build and the pip options that find it."""
    pinned = pin(constraints, "torch")
    if target.torch == "pypi":
        # Isolated from pip's configuration: a find-links folder holding torch==X+cpu would otherwise win over
        # PyPI's torch==X, as a local version label sorts higher.
        return f"torch=={pinned}", ["--isolated", "--index-url", target.torch_index or INDEX]
    where = target.torch_index or TORCH_INDEX.format(variant=target.torch)
    return f"torch=={pinned}+{target.torch}", ["--find-links" if Path(where).is_dir() else "--extra-index-url", where]


def download(requirements: list[str], constraints: Path, target: Target, out: Path, extra: list[str]) -> None:
    """pip's download of `requirements` and all they need, through `constraints`, as wheels for the target.

    A requirement published only as a pure-Python source archive (jieba, rouge-score: the eval extra) is built into
    a py3-none-any wheel here, which installs on any target; one that compiles code is refused in one line.
    """
    built: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="tf-bundle-built-") as folder:
        while True:
            args = ["download", "-d", str(out), "-c", str(constraints), *target.pip_flags(), "--find-links", folder]
            result = subprocess.run(
                [sys.executable, "-m", "pip", *args, *extra, *requirements], capture_output=True, text=True
            )
            if result.returncode == 0:
                return
            name, message = _refusal(result, constraints, target)
            version = pin(constraints, name, required=False)
            if name in built or not message.endswith(SOURCE_ONLY) or not version:
                raise UserError(message)
            if not build_pure_wheel(name, version, Path(folder)):
                raise UserError(message)
            built.add(name)


def _refusal(result: subprocess.CompletedProcess, constraints: Path, target: Target) -> tuple[str, str]:
    """The requirement pip could not meet and its one-line refusal (a generic one naming pip's error otherwise)."""
    # pip names the culprit as "No matching distribution found for X" or, where a pin is involved, as a conflict
    # with "The user requested (constraint) X==V": the first one without a wheel for the target is the refusal.
    names = re.findall(r"No matching distribution found for ([A-Za-z0-9._-]+)", result.stderr)
    names += re.findall(r"The user requested \(constraint\) ([A-Za-z0-9._-]+)", result.stdout + result.stderr)
    names += re.findall(r"Cannot install ([A-Za-z0-9._-]+)", result.stderr)
    for name in dict.fromkeys(names):
        message = no_wheel_message(name, constraints, target)
        if message:
            return name, message
    raise UserError(f"pip download failed for the bundle: {_last_error(result.stderr)}")


def build_pure_wheel(name: str, version: str, folder: Path) -> bool:
    """Build name==version's source archive into a py3-none-any wheel in `folder`; False where it compiles code."""
    import tarfile
    import zipfile

    from packaging.utils import parse_sdist_filename

    sources = [
        (filename, url) for filename, url in _index_files(name) or []
        if filename.endswith((".tar.gz", ".zip")) and str(parse_sdist_filename(filename)[1]) == version
    ]  # fmt: skip
    if not sources:
        return False
    filename, url = sources[0]
    with tempfile.TemporaryDirectory(prefix="tf-sdist-") as tmp:
        archive = Path(tmp) / filename
        with urllib.request.urlopen(url, timeout=60) as answer:
            archive.write_bytes(answer.read())
        if filename.endswith(".zip"):
            members = zipfile.ZipFile(archive).namelist()
        else:
            with tarfile.open(archive) as tar:
                members = tar.getnames()
        if any(COMPILED.search(member) for member in members):
            return False
        _pip(["wheel", "-q", "--no-deps", "-w", tmp, str(archive)], f"building a wheel of {name}=={version}")
        wheel = next(Path(tmp).glob("*.whl"))
        if not wheel.name.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl")):
            return False
        shutil.move(wheel, folder / wheel.name)
    return True


def no_wheel_message(name: str, constraints: Path, target: Target) -> str | None:
    """One line naming `name`'s missing wheel for the target and the platforms that have one; None if it has one."""
    version = pin(constraints, name, required=False)
    found = platforms_with_wheels(name, version) if version else None
    wanted = f"CPython {target.python} on {target.platform}"
    spec = f"{name}=={version}" if version else name
    if found is None:
        return f"no wheel of {spec} for {wanted} (the package index could not be asked which platforms have one)"
    if any(target.takes(*tag) for tag in found):
        return None
    if not found:
        return f"no wheel of {spec} for {wanted}; {SOURCE_ONLY}"
    others = sorted({f"{interpreter} {platform}" for interpreter, _, platform in found})
    more = f" and {len(others) - 6} more" if len(others) > 6 else ""
    return f"no wheel of {spec} for {wanted}; wheels exist for: {', '.join(others[:6])}{more}"


def platforms_with_wheels(name: str, version: str) -> list[tuple[str, str, str]] | None:
    """The (interpreter, abi, platform) tags of the index's wheels of name==version; None if it cannot be asked."""
    from packaging.utils import parse_wheel_filename

    files = _index_files(name)
    if files is None:
        return None
    tags = set()
    for filename, _ in files:
        if filename.endswith(".whl"):
            _, found, _, wheel_tags = parse_wheel_filename(filename)
            if str(found) == version:
                tags |= {(tag.interpreter, tag.abi, tag.platform) for tag in wheel_tags}
    return sorted(tags)


def _index_files(name: str) -> list[tuple[str, str]] | None:
    """(filename, URL) of every file the package index lists for `name` (PEP 691); None if it cannot be asked."""
    from packaging.utils import canonicalize_name

    page = f"{os.environ.get('PIP_INDEX_URL', INDEX).rstrip('/')}/{canonicalize_name(name)}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return [(entry["filename"], urljoin(page, entry["url"])) for entry in json.load(answer)["files"]]
    except (OSError, ValueError, KeyError):
        return None


def pin(constraints: Path, name: str, required: bool = True) -> str | None:
    """The version constraints.txt pins `name` to."""
    from packaging.utils import canonicalize_name

    wanted = canonicalize_name(name)
    for line in constraints.read_text(encoding="utf-8").splitlines():
        found = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if found and canonicalize_name(found[1]) == wanted:
            return found[2]
    if required:
        raise UserError(f"{constraints}: no pin for {name}; add `{name}==VERSION` (docs/compatibility.md)")
    return None


def _pip(args: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{what} failed: {_last_error(result.stderr)}")


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("ERROR")] or stderr.strip().splitlines()[-1:]
    return " ".join(lines)[:500] or "no message"
