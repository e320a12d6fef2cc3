"""The wheels that travel to the device machine (scripts/gpu_bundle.sh): check their needs, slim bitsandbytes'.

`check DIR`: every carried wheel's needs must be met by another carried wheel or by the image, whose packages are
those /work/.library/device/KINDS.md lists for nvidia-h200 (read 2026-11-17), with the versions its pip list gives
where it gives one. Prints each need met by the image; exits 1 naming any unmet one.
`slim WHEEL KEEP`: rewrite a wheel without its native libraries (lib*.so) except those whose name contains KEEP,
and without their RECORD lines: bitsandbytes' wheel (43 MB) holds one library per CUDA, ROCm and XPU release, and
the device's torch (cu130) loads one of them.

    python scripts/gpu_wheels.py check .whl
    python scripts/gpu_wheels.py slim .whl/bitsandbytes-0.50.2-...whl cuda13
"""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

# KINDS.md's pip list row (2026-11): the image's versions that matter here; None where only the name is listed.
IMAGE = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
    **dict.fromkeys(
        [
            "aiohttp",
            "anyio",
            "attrs",
            "certifi",
            "charset-normalizer",
            "click",
            "filelock",
            "fsspec",
            "h11",
            "httpcore",
            "httpx",
            "idna",
            "jinja2",
            "markdown-it-py",
            "markupsafe",
            "packaging",
            "pandas",
            "peft",
            "psutil",
            "pyarrow",
            "pygments",
            "python-dateutil",
            "pyyaml",
            "regex",
            "requests",
            "rich",
            "shellingham",
            "six",
            "tqdm",
            "typer",
            "typing-extensions",
            "urllib3",
            "xxhash",
        ]
    ),
}
ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_machine": "x86_64", "platform_system": "Linux", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip


def requires(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on the device (no extras), from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    found = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    return [r for r in found if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


def slim(wheel: Path, keep: str) -> None:
    """Rewrite `wheel` in place without the native libraries whose name lacks `keep` (RECORD follows)."""
    dropped = re.compile(r"(^|/)lib[^/]*\.so$")
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        names = [n for n in source.namelist() if not dropped.search(n) or keep in n.rsplit("/", 1)[-1]]
        for name in names:
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{line}\n" for line in lines if line.split(",")[0] in names).encode()
            target.writestr(source.getinfo(name), data)
    tmp.replace(wheel)


def check(folder: Path) -> None:
    """Check the needs of the wheels in `folder`."""
    wheels = sorted(folder.glob("*.whl"))
    carried = {canonicalize_name(parse_wheel_filename(w.name)[0]): parse_wheel_filename(w.name)[1] for w in wheels}
    unmet = []
    for wheel in wheels:
        for need in requires(wheel):
            name = canonicalize_name(need.name)
            version = carried.get(name) or (Version(IMAGE[name]) if IMAGE.get(name) else None)
            if name not in carried and name not in IMAGE:
                unmet.append(f"{wheel.name} needs {need}: neither carried nor in the image")
            elif version is not None and not need.specifier.contains(version, prereleases=True):
                unmet.append(f"{wheel.name} needs {need}: {'carried' if name in carried else 'image has'} {version}")
            elif name not in carried:
                print(f"{wheel.name}: {need} from the image ({version or 'version not listed'})")
    if unmet:
        sys.exit("\n".join(unmet))
    print(f"{len(wheels)} wheels: every need is carried or in the image")


if __name__ == "__main__":
    if sys.argv[1] == "slim":
        slim(Path(sys.argv[2]), sys.argv[3])
    else:
        check(Path(sys.argv[2]))
