"""Docker for the deployment tests: Debian's docker.io, debootstrap and docker-compose (installed where absent), a
dockerd of the tests' own, and a Debian bookworm base image built with debootstrap (no image registry is reachable)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("TUNEFORGE_TEST_CACHE", Path.home() / ".cache" / "tuneforge-tests"))
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm"]
# The base image's tag names its recipe, so a changed recipe builds a new one; dockerd's data root (under CACHE) keeps
# it between runs (debootstrap takes about 1.5 min).
BASE = f"tuneforge-base:bookworm-{hashlib.sha256(' '.join(DEBOOTSTRAP).encode()).hexdigest()[:8]}"
LABEL = "tuneforge-test"  # every container the tests start, removed at the end
Docker = Callable[..., subprocess.CompletedProcess]
DEBS = (("docker.io", "dockerd"), ("debootstrap", "debootstrap"), ("docker-compose", "docker-compose"))  # package, exe


def _install_docker() -> str | None:
    """Debian's docker.io, debootstrap and docker-compose, installed where absent (as setup.sh installs chromium)."""
    missing = [package for package, exe in DEBS if shutil.which(exe) is None]
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{' and '.join(missing)} not installed, and apt-get as root is not available to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}"
    return None


@contextmanager
def running_dockerd() -> Iterator[Docker]:
    """A dockerd of the tests' own (socket in a fresh folder, images kept under CACHE); `docker(*args)` runs the CLI
    (`command=` another client of it, such as docker-compose); skips the test where it cannot start."""
    reason = _install_docker()
    if reason:
        pytest.skip(reason)
    run = Path(tempfile.mkdtemp(prefix="tfd-", dir="/tmp"))  # a socket path must stay under 108 characters
    socket = f"unix://{run}/docker.sock"
    log = (run / "dockerd.log").open("w")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--host",
            socket,
            "--data-root",
            str(CACHE / "docker"),
            "--exec-root",
            str(run / "exec"),
            "--pidfile",
            str(run / "dockerd.pid"),
        ],
        stdout=log,
        stderr=log,
    )

    def cli(
        *args: str, timeout: int = 900, command: tuple[str, ...] = ("docker",), env: dict | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": socket, "DOCKER_BUILDKIT": "0", **(env or {})}
        return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=timeout, **kwargs)

    deadline = time.monotonic() + 60
    while cli("info", timeout=30).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            tail = (run / "dockerd.log").read_text().strip().splitlines()[-1:]
            pytest.skip(f"dockerd could not start here: {tail}")
        time.sleep(1)
    try:
        yield cli
    finally:
        leftover = cli("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
        if leftover:
            cli("rm", "-f", *leftover)
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(run, ignore_errors=True)


def base_image(docker: Docker) -> str:
    """A Debian bookworm image with python3.11 and venv, from Debian's packages (no image registry is reachable)."""
    if docker("image", "inspect", BASE).returncode == 0:
        return BASE
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "rootfs.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    done = subprocess.run(
        [*DEBOOTSTRAP, str(rootfs), "http://deb.debian.org/debian"], capture_output=True, text=True, timeout=1200
    )
    if done.returncode != 0:
        shutil.rmtree(rootfs, ignore_errors=True)
        pytest.skip(f"debootstrap could not build the base image (no Debian mirror?): {done.stderr[-300:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = docker("import", "-", BASE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    assert imported.returncode == 0, imported.stderr
    return BASE
