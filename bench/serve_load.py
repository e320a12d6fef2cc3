"""Load on the built-in server: N concurrent streaming clients against a tiny Qwen3 with the real tokenizer.

The server runs as users run it, `tuneforge serve` in its own process; the clients are threads of this one (in one
process, their work on the interpreter lock would be charged to the server).

For each client count it sends the same number of chat requests (greedy, `max_tokens` each) through the
official `openai` client and measures requests/s, generated tokens/s, p50/p95 latency and p50 time to
first token. Ratios are against the first client count of the same invocation. A last level has
`--disconnect-clients` clients, of which `--disconnecting` close their stream after a few chunks: it counts
failures, hangs (no answer within `--hang-after` seconds) and what the server still runs afterwards.
Not part of the tests.

    .venv/bin/python bench/serve_load.py --clients 1 4 16 --requests 48 --max-tokens 32
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Qwen3 the tests use (conftest.make_tiny_qwen3)


def one_request(client, model: str, index: int, max_tokens: int, leave_after: int | None = None) -> dict[str, float]:
    """Stream one chat answer; return its latency, time to first token and generated tokens.

    With `leave_after`, the client closes the stream after that many chunks (a user who goes away).
    """
    import openai

    try:
        return _stream(client, model, index, max_tokens, leave_after)
    except openai.APITimeoutError:
        return {"hang": 1}
    except Exception as exc:  # noqa: BLE001 -- counted and reported, not raised: the benchmark measures failures
        return {"error": f"{type(exc).__name__}: {exc}"}


def _stream(client, model: str, index: int, max_tokens: int, leave_after: int | None) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Tell me about item {index}."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    for count, chunk in enumerate(stream):
        if leave_after is not None and count == leave_after:
            stream.close()
            return {"left": 1, "latency": time.perf_counter() - start}
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - start
    return {"latency": latency, "ttft": first if first is not None else latency, "tokens": tokens}


def run_level(
    url: str, model: str, clients: int, requests: int, max_tokens: int, leaving: int = 0, hang_after: float = 600
) -> dict[str, float]:
    """`requests` requests spread over `clients` concurrent clients (the first `leaving` go away); figures."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", timeout=hang_after, max_retries=0)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(
            pool.map(lambda i: one_request(client, model, i, max_tokens, 4 if i < leaving else None), range(requests))
        )
    wall = time.perf_counter() - start
    failures = [r["error"] for r in done if "error" in r]
    hangs = sum(r.get("hang", 0) for r in done)
    done = [r for r in done if "tokens" in r]  # answered in full
    latencies = sorted(r["latency"] for r in done)
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in done) / wall, 1),
        "p50_latency_s": round(statistics.median(latencies), 3),
        "p95_latency_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "p50_ttft_s": round(statistics.median(r["ttft"] for r in done), 3),
        "left_mid_stream": leaving,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "hangs": hangs,
    }


@contextmanager
def served(model_dir: Path, name: str, timeout: float = 300) -> Iterator[str]:
    """`tuneforge serve` of `model_dir` in a child process until the block ends; yields its base URL."""
    import httpx

    with socket.socket() as sock:  # a free port; the tiny window before the server binds it is harmless here
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tuneforge.cli", "serve", "--model", str(model_dir)]
    server = subprocess.Popen([*command, "--served-model-name", name, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tuneforge serve did not start on port {port}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="Concurrent clients per level.")
    parser.add_argument("--requests", type=int, default=48, help="Requests per level.")
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--disconnect-clients", type=int, default=32, help="Clients of the disconnect level.")
    parser.add_argument("--disconnecting", type=int, default=8, help="Of those, how many leave mid-stream.")
    parser.add_argument("--hang-after", type=float, default=300, help="Seconds without an answer that count as a hang.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()

    import httpx
    from conftest import make_tiny_qwen3

    from tuneforge.io import atomic_write_json

    host = machine("transformers", "fastapi", "uvicorn", "openai")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_qwen3(Path(tmp) / "tiny-qwen3")
        with served(model_dir, "tiny-qwen3") as url:
            run_level(url, "tiny-qwen3", 1, 2, args.max_tokens)  # warm-up
            levels = [run_level(url, "tiny-qwen3", n, args.requests, args.max_tokens) for n in args.clients]
            n = args.disconnect_clients
            levels.append(run_level(url, "tiny-qwen3", n, n, args.max_tokens, args.disconnecting, args.hang_after))
            time.sleep(2)  # a step or two for the server to drop the rows of clients that left
            levels[-1]["running_after"] = httpx.get(f"{url}/health", timeout=10).json()["running"]

    base = levels[0]
    for level in levels:
        level["requests_per_s_ratio"] = round(level["requests_per_s"] / base["requests_per_s"], 2)
        level["p50_latency_ratio"] = round(level["p50_latency_s"] / base["p50_latency_s"], 2)
    header = ["clients", "req/s", "tok/s", "p50 s", "p95 s", "p50 TTFT s", "req/s ×", "p50 latency ×", "left"]
    header += ["failures", "hangs"]
    keys = [
        "clients",
        "requests_per_s",
        "tokens_per_s",
        "p50_latency_s",
        "p95_latency_s",
        "p50_ttft_s",
        "requests_per_s_ratio",
        "p50_latency_ratio",
        "left_mid_stream",
        "failures",
        "hangs",
    ]
    print(" | ".join(header))
    for level in levels:
        print(" | ".join(str(level[k]) for k in keys))
    command = " ".join([".venv/bin/python", "bench/serve_load.py", *sys.argv[1:]])
    atomic_write_json(
        args.out,
        {
            "benchmark": "serve_load",
            "command": command,
            "machine": host,
            "max_tokens": args.max_tokens,
            "baseline_clients": base["clients"],
            "levels": levels,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
