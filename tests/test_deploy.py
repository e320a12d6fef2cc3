"""Deployment proven here: an offline bundle installed and trained on in a network namespace with no network, and the
Docker image built from that bundle (demo without network, serve answering the openai client, the web UI in a
headless browser, training into a mounted runs folder, docker/compose.yaml's webui and serve under Debian's
docker-compose). One bundle, one image and one training run serve all the tests (module fixtures)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA_DIR, ROOT, make_tiny_qwen3, needs_assets
from dockerd import LABEL, Docker, base_image, running_dockerd

from tuneforge.eval.suite import PROBE_QUESTIONS

MODEL_ID = "tuneforge-test/tiny-qwen3"  # lives in a Hugging Face cache the test writes, as a downloaded model does
EXTRAS = "serve,webui,tensorboard,eval"  # demo, train, serve, webui; TensorBoard offline; eval (source-only jieba)
# The first test to use a fixture pays for it (bundle ~3 min, base image ~1.5 min, image build ~3-5 min on 2 cores).
pytestmark = pytest.mark.timeout(2400)
TIMINGS = Path(os.environ.get("TUNEFORGE_ARTIFACTS", ROOT / "tests" / "artifacts")) / "deploy" / "timings.json"


def tuneforge(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


def record(name: str, value: float | int) -> None:
    """Keep a measured figure (docs/performance.md quotes them) in tests/artifacts/deploy/timings.json."""
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    TIMINGS.write_text(json.dumps({**found, name: value}, indent=1))


def hub_cache_with_tiny_model(cache: Path) -> Path:
    """A Hugging Face hub cache holding MODEL_ID at one revision, laid out as `hf download` leaves it."""
    revision = "0" * 40
    repo = cache / f"models--{MODEL_ID.replace('/', '--')}"
    make_tiny_qwen3(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


def offline_env(**extra: str) -> dict[str, str]:
    """A clean environment: no PYTHONPATH (the installed tuneforge must be the bundle's), no pip or HF settings."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "TOKENIZERS_PARALLELISM": "false", **extra}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """`tuneforge bundle` for this machine: wheels for [serve,webui] and CPU torch, the cached tiny model, a dataset."""
    if not (DATA_DIR / "alpaca_en_demo.json").is_file():
        pytest.skip(f"datasets not found at {DATA_DIR} (../shared/assets)")
    work = tmp_path_factory.mktemp("bundle")
    cache = hub_cache_with_tiny_model(work / "hub-cache")
    data = work / "identity.json"
    data.write_text(json.dumps(json.loads((DATA_DIR / "alpaca_en_demo.json").read_text())[:16], ensure_ascii=False))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = tuneforge(
        "bundle", "--out", str(work / "b"), "--extras", EXTRAS, "--model", MODEL_ID, "--dataset", str(data), env=env
    )
    assert done.returncode == 0, done.stderr
    record("bundle_build_s", round(time.monotonic() - started, 1))
    record("bundle_mib", round(sum(p.stat().st_size for p in (work / "b").rglob("*") if p.is_file()) / 2**20))
    return work / "b"


@pytest.mark.slow
@needs_assets
def test_bundle_holds_what_it_lists_and_resolves_alone(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert manifest["models"] == {MODEL_ID: MODEL_ID} and manifest["datasets"] == {
        str(bundle.parent / "identity.json"): "data/identity.json"
    }
    revision = (bundle / "hf-cache/models--tuneforge-test--tiny-qwen3/refs/main").read_text()
    snapshot = bundle / "hf-cache/models--tuneforge-test--tiny-qwen3/snapshots" / revision
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / "model.safetensors").is_symlink()
    wheels = {p.name.split("-")[0].lower() for p in (bundle / "wheels").glob("*.whl")}
    assert {"tuneforge", "torch", "transformers", "fastapi", "gradio"} <= wheels
    assert "bitsandbytes" not in wheels and "deepspeed" not in wheels  # only the extras asked for
    assert next((bundle / "wheels").glob("torch-*.whl")).name.startswith("torch-2.13.0+cpu-cp311")
    verified = tuneforge("bundle", "verify", str(bundle))
    assert verified.returncode == 0, verified.stderr
    assert f"{len(wheels)} wheels install from the bundle alone" in verified.stdout


@pytest.mark.slow
@needs_assets
def test_bundle_installs_trains_and_evaluates_in_a_network_namespace_without_network(bundle, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("unshare -n (a network namespace) is not available here: needs root or user namespaces")
    config = {
        "model": {"name_or_path": MODEL_ID},  # found through the bundle's hub cache, as on the offline machine
        "data": {
            "datasets": [
                {
                    "path": str(bundle / "data" / "identity.json"),
                    "format": "alpaca",
                    "placeholders": {"name": "Tuney", "author": "Forge"},  # what the self-cognition probe expects
                }
            ],
            "max_length": 128,
            "val_size": 4,  # the held-out loss's rows
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8},
        "train": {
            "max_steps": 2,
            "per_device_batch_size": 2,
            "gradient_accumulation": 1,
            "logging_steps": 1,
            "save_steps": 100,
            "gradient_checkpointing": False,
            "report_to": "tensorboard",
        },
        "output": {"dir": str(tmp_path / "runs" / "offline")},
    }
    (tmp_path / "train.yaml").write_text(json.dumps(config))  # JSON is YAML
    script = f"""set -e
python3 -c "import socket; socket.create_connection(('pypi.org', 443), timeout=5)" 2>/dev/null && exit 99
sh {bundle}/install.sh {tmp_path}/venv
. {tmp_path}/venv/bin/activate
python -c "import tuneforge; print('tuneforge from', tuneforge.__file__)"
python -c "import jieba, rouge_score.rouge_scorer, math_verify; print('eval extra:', len(jieba.lcut('我是模型')) > 1)"
tuneforge demo --workdir {tmp_path}/demo
tuneforge train {tmp_path}/train.yaml
tuneforge eval --run {tmp_path}/runs/offline --suite self-cognition
"""
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=offline_env(PYTHON=shutil.which("python3.11") or "python3"),
        cwd=tmp_path,
        timeout=1500,
    )
    assert done.returncode != 99, "the network namespace reached pypi.org"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record("offline_install_demo_train_s", round(time.monotonic() - started, 1))
    assert "offline check: ok" in done.stdout
    assert f"tuneforge from {tmp_path}/venv/lib/python3.11/site-packages/tuneforge/__init__.py" in done.stdout
    assert "the model should now say it is" in done.stdout  # the demo's before/after table
    assert "eval extra: True" in done.stdout  # its source-only jieba and rouge-score came as wheels built outside
    run = tmp_path / "runs" / "offline"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    # TensorBoard's own reader finds the loss of both steps in the run's logs (train.report_to: tensorboard).
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(run / "logs" / "tensorboard")).Reload()
    assert [scalar.step for scalar in events.Scalars("train/loss")] == [1, 2]
    # The evaluation: held-out loss of both models, and the probe's questions asked of both.
    results = json.loads((run / "eval" / "self-cognition" / "results.json").read_text())
    loss = results["tasks"]["heldout-loss"]["metrics"]["loss"]
    assert results["tasks"]["heldout-loss"]["n"] == 4 and loss["tuned"] > 0 and loss["baseline"] > 0
    probe = results["tasks"]["self-cognition"]
    assert probe["n"] == sum(len(questions) for questions in PROBE_QUESTIONS.values())
    assert set(probe["metrics"]["accuracy"]) == {"baseline", "tuned"}
    activate = (tmp_path / "venv" / "bin" / "activate").read_text()
    assert f'HF_HUB_CACHE="{bundle}/hf-cache"' in activate and "HF_HUB_OFFLINE=1" in activate


# --- Docker ---------------------------------------------------------------------------------------------------------

IMAGE = "tuneforge-test:cpu"


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    """The tests' own dockerd, for the whole module."""
    with running_dockerd() as cli:
        yield cli


@pytest.fixture(scope="module")
def image(docker, bundle) -> Iterator[str]:
    """The project's image, FROM the Debian base (a build argument), installed from the bundle with no index."""
    base = base_image(docker)
    started = time.monotonic()
    built = docker(
        "build",
        "-f",
        str(ROOT / "docker" / "Dockerfile"),
        "--build-arg",
        f"BASE={base}",
        "-t",
        IMAGE,
        str(bundle),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    record("docker_build_s", round(time.monotonic() - started, 1))
    record("image_cpu_mib", round(int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout) / 2**20))
    record("image_base_mib", round(int(docker("image", "inspect", "-f", "{{.Size}}", base).stdout) / 2**20))
    yield IMAGE
    docker("rmi", "-f", IMAGE)
    docker("image", "prune", "-f")  # the install stage's layers


def _mounts(bundle: Path) -> list[str]:
    # The bundle's hub cache where the image's HF_HOME keeps the hub's, read-only; its data as /data.
    return ["-v", f"{bundle}/hf-cache:/cache/huggingface/hub:ro", "-v", f"{bundle}/data:/data:ro"]


def _started(docker, *args: str) -> tuple[str, str]:
    """Start a container in the background; its id and the host address of its one published port."""
    started = docker("run", "-d", "--label", LABEL, *args)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    port = docker("port", container).stdout.split()[-1]  # e.g. 127.0.0.1:49153
    return container, f"http://{port}"


def _wait_http(docker, container: str, url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        logs = docker("logs", "--tail", "30", container)
        assert state == "true", f"container exited: {logs.stdout}{logs.stderr}"
        assert time.monotonic() < deadline, f"{url} did not answer: {logs.stdout}{logs.stderr}"
        time.sleep(2)


@pytest.mark.slow
@needs_assets
def test_docker_demo_and_offline_check_without_network(docker, image, bundle):
    demo = docker("run", "--rm", "--label", LABEL, "--network", "none", image, "demo", "--workdir", "/tmp/demo")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "the model should now say it is" in demo.stdout
    check = docker(
        "run",
        "--rm",
        "--label",
        LABEL,
        "--network",
        "none",
        "--shm-size",
        "1g",
        *_mounts(bundle),
        image,
        "env",
        "--offline-check",
        "--model",
        MODEL_ID,
    )
    assert check.returncode == 0, check.stderr
    assert "offline check: ok" in check.stdout
    user = docker("run", "--rm", "--entrypoint", "id", image, "-un")
    assert user.stdout.strip() == "tuneforge"  # not root unless --user says so


def _answers_the_openai_client(url: str) -> None:
    """The official openai client lists the served model and gets a chat answer from it."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    name = client.models.list().data[0].id
    answer = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=8, temperature=0
    )
    assert answer.model == name and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop" or answer.usage.completion_tokens == 8


def _webui_tabs_show(url: str, login: tuple[str, str] | None = None) -> None:
    """The web UI's page in headless Chromium (logged in first where it asks): its four tabs and the launch button."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"{chromium} not found: install Debian's chromium (scripts/setup.sh test does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page(locale="en-US")
        page.goto(url)
        if login:
            page.get_by_label("username").fill(login[0])
            page.get_by_label("password").fill(login[1])
            page.get_by_role("button", name="Login").click()
        for tab in ("Train", "Watch", "Chat", "Export"):
            sync_api.expect(page.get_by_role("tab", name=tab)).to_be_visible(timeout=60_000)
        sync_api.expect(page.locator("#launch")).to_be_visible()
        browser.close()


@pytest.mark.slow
@needs_assets
def test_docker_serve_answers_the_openai_client(docker, image, bundle):
    pytest.importorskip("openai", reason="the openai client is not installed (the [test] extra)")
    container, url = _started(
        docker,
        "-p",
        "127.0.0.1::8000",
        *_mounts(bundle),
        image,
        "serve",
        "--model",
        MODEL_ID,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    )
    _wait_http(docker, container, f"{url}/health")
    _answers_the_openai_client(url)
    docker("rm", "-f", container)


@pytest.mark.slow
@needs_assets
def test_docker_webui_page_loads_in_headless_chromium(docker, image):
    container, url = _started(docker, "-p", "127.0.0.1::7860", image, "webui", "--host", "0.0.0.0")
    _wait_http(docker, container, url)
    _webui_tabs_show(url)
    docker("rm", "-f", container)


@pytest.fixture(scope="module")
def trained_run(docker, image, bundle, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step training in a container as the host user, into a mounted runs folder (the compose test serves it)."""
    runs = tmp_path_factory.mktemp("docker-runs")
    config = {
        "model": {"name_or_path": MODEL_ID},
        "data": {"datasets": [{"path": "/data/identity.json", "format": "alpaca"}], "max_length": 128, "val_size": 0},
        "method": {"type": "lora", "rank": 4, "alpha": 8},
        "train": {"max_steps": 2, "per_device_batch_size": 2, "logging_steps": 1, "gradient_checkpointing": False},
        "output": {"dir": "/workspace/runs/docker"},
    }
    (runs / "train.yaml").write_text(json.dumps(config))
    trained = docker(
        "run",
        "--rm",
        "--label",
        LABEL,
        "--network",
        "none",
        "--shm-size",
        "1g",
        "--user",
        f"{os.getuid()}:{os.getgid()}",
        "-v",
        f"{runs}:/workspace/runs",
        *_mounts(bundle),
        image,
        "train",
        "/workspace/runs/train.yaml",
    )
    return runs, trained


@pytest.mark.slow
@needs_assets
def test_docker_training_writes_the_run_to_the_host_as_the_host_user(trained_run):
    runs, trained = trained_run
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    run = runs / "docker"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [run, *run.rglob("*")]}
    assert owners == {(os.getuid(), os.getgid())}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@needs_assets
def test_compose_runs_webui_and_serve_healthy_on_the_trained_run(docker, image, bundle, trained_run, tmp_path):
    pytest.importorskip("openai", reason="the openai client is not installed (the [test] extra)")
    runs, trained = trained_run
    assert trained.returncode == 0, "the training container failed (see the training test)"
    hf_home = tmp_path / "hf"  # the compose file mounts HF_CACHE as HF_HOME; the bundle's hub cache is its hub/
    shutil.copytree(bundle / "hf-cache", hf_home / "hub")
    (tmp_path / "webui_auth").write_text("ann:s3cret\n")
    ports = {"webui": _free_port(), "serve": _free_port()}
    env = {
        "TUNEFORGE_IMAGE": image,
        "TUNEFORGE_USER": f"{os.getuid()}:{os.getgid()}",
        "RUNS_DIR": str(runs),
        "RUN": "runs/docker",
        "MODELS_DIR": str(tmp_path),
        "HF_CACHE": str(hf_home),
        "MODELSCOPE_CACHE": str(tmp_path),
        "WEBUI_AUTH_FILE": str(tmp_path / "webui_auth"),
        "WEBUI_PORT": f"127.0.0.1:{ports['webui']}",
        "SERVE_PORT": f"127.0.0.1:{ports['serve']}",
    }
    compose = ("docker-compose", "-f", str(ROOT / "docker" / "compose.yaml"), "-p", "tuneforge-test")
    up = docker("up", "-d", "webui", "serve", command=compose, env=env)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert "docker-compose version 1.29.2" in docker("version", command=compose).stdout
        for service in ("webui", "serve"):
            container = docker("ps", "-q", service, command=compose, env=env).stdout.strip()
            deadline = time.monotonic() + 300
            while (
                health := docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            ) != "healthy":
                logs = docker("logs", "--tail", "30", container)
                assert health == "starting" and time.monotonic() < deadline, f"{service}: {health}: {logs.stderr}"
                time.sleep(5)
        _answers_the_openai_client(f"http://127.0.0.1:{ports['serve']}")
        _webui_tabs_show(f"http://127.0.0.1:{ports['webui']}", login=("ann", "s3cret"))
    finally:
        down = docker("down", "-t", "5", command=compose, env=env)
    assert down.returncode == 0, down.stderr
    assert docker("ps", "-aq", "--filter", "label=com.docker.compose.project=tuneforge-test").stdout.strip() == ""
