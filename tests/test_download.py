"""`tuneforge download` against a local Hugging Face hub mirror: the routes huggingface_hub's snapshot_download
uses (repo info, tree listing, HEAD and GET of /resolve/, with Range for resuming), served from memory."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

SHA = "0123456789abcdef0123456789abcdef01234567"
REPOS = {
    # weights.bin: larger than one download chunk, which is the unit huggingface_hub resumes from
    ("models", "acme/tiny"): {"config.json": b'{"model_type": "qwen3"}', "weights.bin": bytes(range(256)) * 45056},
    ("datasets", "acme/chat"): {"data/train.jsonl": b'{"instruction": "hi", "output": "hello"}\n'},
}


class Hub(BaseHTTPRequestHandler):
    """The hub API routes snapshot_download calls (huggingface_hub 2.x: _snapshot_download.py, file_download.py)."""

    requests: list[tuple[str, str, str | None]] = []
    cut: set[str] = set()  # files whose first full GET the connection drops 1000 bytes before the end

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        path = self.path.split("?")[0]
        api = re.fullmatch(r"/api/(models|datasets)/(\w+/\w+)/(revision|tree)/\w+(?:/.*)?", path)
        if api:
            files = REPOS.get((api[1], api[2]))
            if files is None:
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
            if api[3] == "revision":
                body = {"id": api[2], "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
            else:
                body = [{"type": "file", "path": f, "size": len(b), "oid": _oid(b)} for f, b in files.items()]
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        resolve = re.fullmatch(r"/(datasets/)?(\w+/\w+)/resolve/(\w+)/(.+)", path)
        kind = "datasets" if resolve and resolve[1] else "models"
        files = REPOS.get((kind, resolve[2])) if resolve else None
        if not files or resolve[4] not in files:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        body = files[resolve[4]]
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{_oid(body)}"'}
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return self._send(206, body[start:], headers)
        if self.command == "GET" and resolve[4] in self.cut:
            self.cut.discard(resolve[4])
            self.send_response(200)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:-1000])
            self.wfile.flush()
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)  # the network drops mid-file
        return self._send(200, body, headers)

    do_GET = do_HEAD = _route


def _oid(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hub.requests, Hub.cut = [], set()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def tuneforge(endpoint: str, cache, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "download", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_model_downloads_through_hf_endpoint_and_resumes_a_dropped_connection(hub, tmp_path):
    cache = tmp_path / "cache"
    weights = REPOS[("models", "acme/tiny")]["weights.bin"]
    Hub.cut = {"weights.bin"}
    result = tuneforge(hub, cache, "acme/tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    folder = cache / "models--acme--tiny" / "snapshots" / SHA
    assert f"acme/tiny: model downloaded to {folder}" in result.stdout
    assert "use it with: model.name_or_path: acme/tiny" in result.stdout
    assert (folder / "weights.bin").read_bytes() == weights
    assert (folder / "config.json").read_bytes() == REPOS[("models", "acme/tiny")]["config.json"]
    gets = [(path, rng) for method, path, rng in Hub.requests if method == "GET" and "/resolve/" in path]
    url = f"/acme/tiny/resolve/{SHA}/weights.bin"
    resumed = f"bytes={DOWNLOAD_CHUNK_SIZE}-"  # the whole chunks received before the drop are kept
    assert len(weights) > DOWNLOAD_CHUNK_SIZE and gets.count((url, None)) == 1 and (url, resumed) in gets
    # a second run finds every file in the cache and downloads nothing
    Hub.requests = []
    again = tuneforge(hub, cache, "acme/tiny")
    assert again.returncode == 0 and not [p for m, p, _ in Hub.requests if m == "GET" and "/resolve/" in p]


def test_dataset_is_found_after_the_model_lookup_misses(hub, tmp_path):
    result = tuneforge(hub, tmp_path / "cache", "acme/chat", "--local-dir", str(tmp_path / "chat"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"acme/chat: dataset downloaded to {tmp_path / 'chat'}" in result.stdout
    assert (tmp_path / "chat" / "data" / "train.jsonl").read_bytes() == REPOS[("datasets", "acme/chat")][
        "data/train.jsonl"
    ]
    assert [p for m, p, _ in Hub.requests if p.startswith(("/api/models", "/api/datasets"))][:2] == [
        "/api/models/acme/chat/revision/main",
        "/api/datasets/acme/chat/revision/main",
    ]


def test_unknown_repository_is_one_line(hub, tmp_path):
    result = tuneforge(hub, tmp_path / "cache", "acme/nothing")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: acme/nothing: no model or dataset repository of that name on huggingface; check the id (org/name), "
        "--hub, and HF_ENDPOINT / HF_TOKEN for mirrors and private repositories"
    ]


@pytest.mark.skipif(importlib.util.find_spec("modelscope") is not None, reason="modelscope is installed here")
def test_modelscope_without_the_package_says_how_to_install(tmp_path):
    result = tuneforge("http://127.0.0.1:9", tmp_path, "acme/tiny", "--hub", "modelscope")
    assert result.returncode == 2 and "pip install 'tuneforge[modelscope]'" in result.stderr
