"""Several processes and nodes on CPU (gloo): DDP, DeepSpeed ZeRO-2/3 and FSDP train exactly like one process,
through every launcher; only node 0 writes; launch mistakes are one-line errors, never a hang.

One 1-process run is the reference: a 2-process run with half the per-device batch has the same global batches
(the same seeded order, no length grouping, fp32, no dropout), so per-step losses and adapter weights must
match it.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA_DIR, needs_assets
from safetensors.torch import load_file
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.chat import open_session
from tuneforge.train.run import train

pytestmark = needs_assets
BIN = Path(sys.executable).parent
HALF_BATCH = "train.per_device_batch_size=2"  # 2 processes × 2 = the reference's global batch of 4
RUN_TIMEOUT = 300  # a hang fails the test instead of the suite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job(tiny_qwen3_dir, tmp_path_factory) -> Path:
    """A 3-step LoRA job on the tiny Qwen3; output.dir is relative, so each working folder gets its own run."""
    root = tmp_path_factory.mktemp("distributed")
    raw = {
        "model": {"name_or_path": str(tiny_qwen3_dir), "dtype": "fp32"},
        "data": {
            "datasets": [{"path": str(DATA_DIR / "identity.json"), "placeholders": {"name": "N", "author": "A"}}],
            "max_length": 128,
            "group_by_length": False,
            "cache_dir": str(root / "cache"),
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "max_steps": 3,
            "learning_rate": 1e-2,
            "lr_scheduler": "constant",
            "per_device_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1000,
        },
        "output": {"dir": "run"},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def step_losses(run: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


def greedy_answer(run: Path) -> str:
    session = open_session(None, None, str(run), SamplingParams(max_new_tokens=8, temperature=0))
    return session.ask([], "你是谁？").content


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> dict:
    """The 1-process run (in this process) every multi-process run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run = train(load_config(job, [f"output.dir={out}"]), log=lambda *_: None).root
    return {
        "losses": step_losses(run),
        "adapter": load_file(str(run / "adapter" / "adapter_model.safetensors")),
        "answer": greedy_answer(run),
    }


def launch(command: list[str], cwd: Path) -> subprocess.Popen:
    """Start a launcher in its own working folder (so its relative output.dir is its own)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_same_training(run: Path, reference: dict) -> None:
    """Same per-step losses (relative 1e-4), same adapter weights, and the adapter loads and answers alike."""
    losses = step_losses(run)
    assert sorted(losses) == [1, 2, 3]
    for step, expected in reference["losses"].items():
        assert losses[step] == pytest.approx(expected, rel=1e-4), (step, losses, reference["losses"])
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert adapter.keys() == reference["adapter"].keys()
    for key, expected in reference["adapter"].items():
        torch.testing.assert_close(adapter[key], expected, rtol=1e-4, atol=1e-5)
    assert greedy_answer(run) == reference["answer"]


def tuneforge_nproc(job: Path, port: int) -> list[str]:
    return [str(BIN / "tuneforge"), "train", str(job), HALF_BATCH, "--nproc", "2", "--master-port", str(port)]


def torchrun(job: Path, port: int) -> list[str]:
    return [
        str(BIN / "torchrun"),
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        "tuneforge.train",
        str(job),
        HALF_BATCH,
    ]


def accelerate_launch(job: Path, port: int) -> list[str]:
    hosts = job.with_name(f"multi_hosts_{port}.yaml")
    hosts.write_text(
        yaml.safe_dump(
            {
                "compute_environment": "LOCAL_MACHINE",
                "distributed_type": "MULTI_GPU",
                "mixed_precision": "no",
                "num_machines": 1,
                "machine_rank": 0,
                "num_processes": 2,
                "main_process_ip": "127.0.0.1",
                "main_process_port": port,
                "rdzv_backend": "static",
                "same_network": True,
            }
        )
    )
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(hosts),
        "-m",
        "tuneforge.train",
        str(job),
        HALF_BATCH,
    ]


@pytest.mark.slow  # about 30-70 s on 2 cores: run in the suite's second step (scripts/test.sh)
@pytest.mark.parametrize(
    "strategy, launcher",
    [
        (["distributed.strategy=deepspeed", "distributed.deepspeed=zero2"], torchrun),
        # The default chunked loss, through the lm_head that ZeRO-3 partitions (gathered for the loss).
        (["distributed.strategy=deepspeed", "distributed.deepspeed=zero3"], tuneforge_nproc),
        (["distributed.strategy=fsdp"], accelerate_launch),
    ],
    ids=["zero2-torchrun", "zero3-tuneforge", "fsdp-accelerate"],
)
def test_two_processes_train_like_one(job, reference, tmp_path, strategy, launcher):
    fresh_cache = f"data.cache_dir={tmp_path / 'cache'}"
    result = finish(launch([*launcher(job, free_port()), *strategy, fresh_cache], tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("tokenizing train:   0%") == 1  # rank 0 tokenized; rank 1 read its cache
    assert_same_training(tmp_path / "run", reference)


def two_nodes(job: Path, folder: Path, overrides: tuple[list[str], list[str]]) -> list[subprocess.CompletedProcess]:
    """`tuneforge train --nnodes 2` as node 0 and node 1 on loopback, each in its own working folder."""
    port = free_port()
    nodes = [
        launch(
            [
                str(BIN / "tuneforge"),
                "train",
                str(job),
                *extra,
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
            ],
            folder / f"node{rank}",
        )
        for rank, extra in enumerate(overrides)
    ]
    return [finish(node) for node in nodes]


@pytest.mark.slow  # about 30-70 s on 2 cores: run in the suite's second step (scripts/test.sh)
def test_two_nodes_on_loopback_train_like_one_and_only_node_0_writes(job, reference, tmp_path):
    # DDP, with gradient checkpointing: it must work under DDP and leave the losses as they are.
    node_args = [HALF_BATCH, "train.gradient_checkpointing=true"]
    results = two_nodes(job, tmp_path, (node_args, node_args))
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
    assert_same_training(tmp_path / "node0" / "run", reference)
    assert list((tmp_path / "node1").iterdir()) == []


def one_line_error(result) -> str:
    """The single `error:` line of a failed command, subprocess or CliRunner (exit 2, no traceback)."""
    if isinstance(result, subprocess.CompletedProcess):
        output, status = result.stderr, result.returncode
    else:
        output, status = result.output, result.exit_code
    assert status == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_nodes_with_different_configs_all_fail_with_one_line(job, tmp_path):
    for result in two_nodes(job, tmp_path, ([], ["train.learning_rate=0.5"])):
        line = one_line_error(result)
        assert line.startswith("error: the processes disagree on the config: train.learning_rate is 0.01 on rank 0")
        assert "but 0.5 on rank 1" in line
    assert list((tmp_path / "node0").iterdir()) == list((tmp_path / "node1").iterdir()) == []


def test_master_port_in_use(job, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(cli("train", str(job), "--nproc", "2", "--master-port", str(port)))
    assert f"distributed.master_port: 127.0.0.1:{port} is already in use" in line and "--master-port" in line


def test_more_processes_than_gpus(job, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = one_line_error(cli("train", str(job), "--nproc", "2"))
    assert "distributed.nproc: 2 processes but 1 GPU(s) visible; use --nproc 1 or fewer" in line


def test_more_processes_than_gpus_under_torchrun(job, monkeypatch):
    # What every rank of `torchrun --nproc-per-node 2 -m tuneforge.train` checks before touching the GPU.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "2 processes but 1 GPU(s) visible" in one_line_error(cli("train", str(job)))


def test_missing_deepspeed_names_the_extra(job, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *rest):
        return None if name == "deepspeed" else real_find_spec(name, *rest)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    line = one_line_error(cli("train", str(job), "distributed.strategy=deepspeed", "--nproc", "2"))
    assert line == (
        "error: distributed.strategy: deepspeed needs the deepspeed package: pip install 'tuneforge[deepspeed]'"
    )


def test_unknown_deepspeed_preset(job):
    line = one_line_error(cli("train", str(job), "distributed.strategy=deepspeed", "distributed.deepspeed=zero4"))
    assert "distributed.deepspeed: 'zero4' is neither a preset (zero2, zero2_offload, zero3, zero3_offload)" in line


def test_a_worker_node_given_a_wrong_master_address_fails_in_one_line_within_seconds():
    import time

    from tuneforge.errors import UserError
    from tuneforge.train.launch import check_master

    start = time.monotonic()
    with pytest.raises(UserError, match=r"^distributed.master_addr: no-such-host.invalid does not resolve \("):
        check_master("no-such-host.invalid", 29500)
    port = free_port()  # nothing listens there
    with pytest.raises(UserError) as refused:
        check_master("127.0.0.1", port, wait_s=2)
    assert str(refused.value).startswith(f"distributed.master_addr: node 0 did not answer at 127.0.0.1:{port} (")
    assert "check --master-addr and --master-port" in str(refused.value) and "\n" not in str(refused.value)
    assert time.monotonic() - start < 10
    with socket.socket() as listening:  # node 0 up: the check passes at once
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_master("127.0.0.1", listening.getsockname()[1], wait_s=2)
