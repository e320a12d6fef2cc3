"""The built-in OpenAI-compatible server, driven with the official `openai` client, and the vLLM / SGLang launchers.

Two servers on 127.0.0.1: a tiny random Qwen3 with the real tokenizer plus a LoRA adapter (real weights), and
the same tokenizer over a scripted token source that answers like a Qwen3 trained for reasoning and tool
calls (exact outputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastapi
import httpx
import openai
import psutil
import pytest
from conftest import ASSETS, needs_assets
from tiny_adapter import make_tiny_adapter
from typer.testing import CliRunner

from tuneforge.cli import app as cli
from tuneforge.data.conversation import Message
from tuneforge.errors import UserError
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.engine import Engine, load_engine
from tuneforge.infer.remote import resolve_api_key
from tuneforge.infer.spec import resolve_spec
from tuneforge.serve.app import create_app, serve_in_background
from tuneforge.serve.protocol import ServerLimits

KEY = "sk-test-key"
TIMEOUT = 60.0
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=TIMEOUT, max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- servers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tiny_qwen3_dir, tmp_path_factory) -> Iterator[tuple[str, Engine]]:
    """The tiny Qwen3 (served under its path) and a LoRA adapter named 'tuned', behind an API key."""
    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path_factory.mktemp("adapter"))
    engine = load_engine(resolve_spec(model=str(tiny_qwen3_dir), adapters={"tuned": adapter}))
    with serve_in_background(create_app(engine, api_key=KEY)) as url:
        yield url, engine


def test_background_server_sends_small_replies_at_once_on_a_kept_alive_connection():
    """TCP_NODELAY on every accepted connection: without it each small reply on a kept-alive connection waited
    about 40 ms for the client's delayed ACK (asyncio sets it only on sockets whose protocol says TCP)."""
    app = fastapi.FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    with serve_in_background(app) as url, httpx.Client() as http:
        assert [http.get(f"{url}/ping").json() for _ in range(2)] == [{"ok": True}] * 2
        port = int(url.rsplit(":", 1)[1])
        accepted = [
            c for c in psutil.Process().net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"
        ]
        assert len(accepted) == 1  # the one kept-alive connection, server side
        with socket.socket(fileno=os.dup(accepted[0].fd)) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


class Qwen3Script:
    """A TokenSource answering by cue in the prompt, the way a Qwen3 fine-tuned for these turns would."""

    REASONED = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.slow_closed = threading.Event()

    def __call__(self, prompt_ids: list[int], params: SamplingParams, model: str) -> Iterator[int]:
        prompt = self.tokenizer.decode(prompt_ids)
        if "slow" in prompt:
            yield from self._slow()
            return
        if prompt.startswith("CUSTOM:"):  # the request's own chat template was used
            yield from self.tokenizer.encode("custom template")
            yield self.tokenizer.eos_token_id
            return
        if "explode" in prompt:
            yield from self.tokenizer.encode("Partial")
            raise RuntimeError("the GPU caught fire")
        if "<tool_response>\n22°C\n</tool_response>" in prompt:
            # The call must come back exactly as the model wrote it, or the model sees a different history.
            text = "It is 22°C in Paris." if f"Let me check.\n{TOOL_TEXT}<|im_end|>" in prompt else "MISMATCH"
        elif "get_weather" in prompt:
            text = f"<think>\nI need the weather tool.\n</think>\n\nLet me check.\n{TOOL_TEXT}"
        elif prompt.endswith("<think>\n\n</think>\n\n"):  # enable_thinking: false
            text = "Plain answer."
        else:
            text = self.REASONED
        yield from self.tokenizer.encode(text)
        yield self.tokenizer.eos_token_id

    def _slow(self) -> Iterator[int]:
        word = self.tokenizer.encode(" word")[0]
        try:
            for _ in range(100_000):
                time.sleep(0.01)
                yield word
        finally:
            self.slow_closed.set()


@contextlib.contextmanager
def scripted_server(tokenizer, limits: ServerLimits = ServerLimits(), **engine) -> Iterator[tuple[str, Qwen3Script]]:
    script = Qwen3Script(tokenizer)
    engine = Engine(tokenizer, {"qwen3-scripted": None}, script, **{"max_model_len": 1_000_000, **engine})
    with serve_in_background(create_app(engine, limits=limits)) as url:
        yield url, script


@pytest.fixture(scope="module")
def scripted(qwen3_tokenizer) -> Iterator[tuple[str, Qwen3Script]]:
    with scripted_server(qwen3_tokenizer) as served:
        yield served


# --- chat and completions on real weights ----------------------------------------------------------------


def expected(engine: Engine, model: str, text: str, max_tokens: int) -> str:
    """What the engine answers greedily, called directly (no server)."""
    return (
        engine.chat([Message("user", text)], SamplingParams(max_new_tokens=max_tokens, temperature=0), model=model)
        .result()
        .content
    )


def test_chat_non_stream_and_stream_agree_with_the_engine(real, tiny_qwen3_dir):
    url, engine = real
    base = str(tiny_qwen3_dir)
    reply = client(url).chat.completions.create(model=base, messages=ask("Who are you?"), max_tokens=8, temperature=0)
    prompt_tokens = len(
        engine.tokenizer.apply_chat_template(ask("Who are you?"), add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )
    assert (reply.model, reply.object, reply.id[:9]) == (base, "chat.completion", "chatcmpl-")
    assert reply.choices[0].message.content == expected(engine, base, "Who are you?", 8)
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        prompt_tokens,
        8,
        prompt_tokens + 8,
    )

    chunks = list(
        client(url).chat.completions.create(
            model=base,
            messages=ask("Who are you?"),
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_adapter_is_chosen_by_model_name(real, tiny_qwen3_dir):
    url, engine = real
    answers = {
        model: client(url)
        .chat.completions.create(model=model, messages=ask("Hello"), max_tokens=6, temperature=0)
        .choices[0]
        .message.content
        for model in (str(tiny_qwen3_dir), "tuned")
    }
    assert answers == {model: expected(engine, model, "Hello", 6) for model in answers}
    assert answers[str(tiny_qwen3_dir)] != answers["tuned"]


def test_completions_endpoint_continues_raw_text(real):
    url, engine = real
    reply = client(url).completions.create(
        model="tuned", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    direct = engine.complete(
        "The capital of France is", SamplingParams(max_new_tokens=5, temperature=0), model="tuned"
    ).result()
    assert reply.choices[0].text == direct.content
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (direct.prompt_tokens, 5)
    streamed = client(url).completions.create(
        model="tuned", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == direct.content


def test_models_lists_base_and_adapters(real, tiny_qwen3_dir):
    url, _ = real
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert response.status_code == 200
    data = response.json()["data"]
    assert [(m["id"], m["object"], m["parent"]) for m in data] == [
        (str(tiny_qwen3_dir), "model", None),
        ("tuned", "model", str(tiny_qwen3_dir)),
    ]
    assert [m.id for m in client(url).models.list()] == [str(tiny_qwen3_dir), "tuned"]


# --- errors ----------------------------------------------------------------------------------------------


def test_wrong_or_missing_api_key_is_401(real):
    url, _ = real
    with pytest.raises(openai.AuthenticationError) as caught:
        client(url, key="wrong").chat.completions.create(model="tuned", messages=ask("hi"), max_tokens=2)
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error"
    assert httpx.get(f"{url}/v1/models", timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"  # probes need no key


def body(**fields) -> bytes:
    """A chat request for 'tuned' with one user message, fields added or replaced."""
    return json.dumps({"model": "tuned", "messages": ask("x"), **fields}).encode()


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "tuned", "messages": [', "body"),  # not JSON
        (b'{"model": "tuned"}', "messages"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
        (body(n=2), "n"),
        (body(temperature=-1), "temperature"),
        (body(max_tokens=100_000), None),  # longer than the context
        (body(chat_template_kwargs={"tokenize": True}), None),
    ],
)
def test_malformed_body_is_400_with_an_openai_error_object(real, content, param):
    url, _ = real
    response = httpx.post(
        f"{url}/v1/chat/completions",
        content=content,
        timeout=TIMEOUT,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def client_port(response: httpx.Response) -> int:
    """The local port of the connection that carried `response` (equal ports: the connection was reused)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"chat_template": "{{ messages }}"}, "chat_template"),
        ({"chat_template_kwargs": {"chat_template": "{% for i in range(9**9) %}{% endfor %}"}}, "chat_template"),
        ({"seed": 2**70}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**30}, None),  # beyond the context
    ],
)
def test_out_of_range_requests_are_400_and_the_connection_stays_usable(scripted, fields, param):
    url, _ = scripted
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        refused = http.post("/v1/chat/completions", json={"model": "qwen3-scripted", "messages": ask("hi"), **fields})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert refused.json()["error"]["param"] == param
        served = http.post("/v1/chat/completions", json={"model": "qwen3-scripted", "messages": ask("hi")})
        assert served.status_code == 200
        assert served.json()["choices"][0]["message"]["content"] == "Hello! How can I help?"
        assert client_port(served) == client_port(refused)


def test_tiny_temperature_decodes_greedily_instead_of_failing(real):
    url, engine = real
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as http:
        first = http.post("/v1/chat/completions", content=body(temperature=1e-45, max_tokens=6, seed=2**63 - 1))
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == expected(engine, "tuned", "x", 6)
        again = http.post("/v1/chat/completions", content=body(max_tokens=2))
        assert again.status_code == 200 and client_port(again) == client_port(first)


def test_request_chat_template_runs_only_when_the_server_trusts_it(qwen3_tokenizer):
    custom = {"chat_template": "CUSTOM:{{ messages[0]['content'] }}"}
    with scripted_server(qwen3_tokenizer, ServerLimits(trust_request_chat_template=True)) as (url, _):
        for fields in (custom, {"chat_template_kwargs": custom}):
            reply = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"), extra_body=fields)
            assert reply.choices[0].message.content == "custom template"


def test_max_tokens_defaults_to_the_server_limit_and_never_beyond_the_context(qwen3_tokenizer):
    prompt_len = len(qwen3_tokenizer.apply_chat_template(ask("slow"), add_generation_prompt=True)["input_ids"])
    with scripted_server(qwen3_tokenizer, ServerLimits(max_tokens_default=5)) as (url, _):
        reply = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("slow"))
        assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (5, "length")
    with scripted_server(qwen3_tokenizer, max_model_len=prompt_len + 3) as (url, _):
        reply = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("slow"))
        assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (3, "length")


def test_a_full_queue_is_429_with_retry_after_and_the_connection_stays_usable(qwen3_tokenizer):
    limits = ServerLimits(max_queued_requests=1, max_num_seqs=1)
    with scripted_server(qwen3_tokenizer, limits) as (url, _):
        running = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("slow"), stream=True)
        next(iter(running))
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            queued = pool.submit(
                lambda: client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"), max_tokens=20)
            )
            full = {"status": "ok", "running": 1, "waiting": 1}
            assert health_becomes(url, full) == full
            refused = http.post("/v1/chat/completions", json={"model": "qwen3-scripted", "messages": ask("hi")})
            assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
            assert refused.json()["error"]["type"] == "rate_limit_error"
            running.close()
            assert queued.result(timeout=20).choices[0].message.content == "Hello! How can I help?"
            served = http.post("/v1/chat/completions", json={"model": "qwen3-scripted", "messages": ask("hi")})
            assert served.status_code == 200 and client_port(served) == client_port(refused)


def test_with_no_queue_a_request_runs_while_a_place_is_free_and_is_refused_once_none_is(qwen3_tokenizer):
    with scripted_server(qwen3_tokenizer, ServerLimits(max_queued_requests=0, max_num_seqs=1)) as (url, _):
        reply = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"))
        assert reply.choices[0].message.content == "Hello! How can I help?"
        running = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("slow"), stream=True)
        next(iter(running))
        with pytest.raises(openai.RateLimitError) as caught:
            client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"))
        assert caught.value.body["message"] == (
            "the server is busy: 1 requests run and 0 wait (--max-num-seqs 1, --max-queued-requests 0); retry after 1 s"
        )
        running.close()


def test_unknown_model_is_404(real):
    url, _ = real
    with pytest.raises(openai.NotFoundError) as caught:
        client(url).chat.completions.create(model="no-such-model", messages=ask("hi"), max_tokens=2)
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found"


# --- reasoning and tool calls (scripted outputs) ---------------------------------------------------------


def test_reasoning_is_split_from_the_answer_in_full_and_in_stream_deltas(scripted):
    url, _ = scripted
    message = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi")).choices[0].message
    assert (message.reasoning_content, message.content) == ("The user greets me.", "Hello! How can I help?")

    chunks = list(client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"), stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The user greets me."
    assert "".join(d.content or "" for d in deltas) == "Hello! How can I help?"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_enable_thinking_false_reaches_the_template(scripted):
    url, _ = scripted
    reply = client(url).chat.completions.create(
        model="qwen3-scripted", messages=ask("hi"), extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    message = reply.choices[0].message
    assert (message.content, getattr(message, "reasoning_content", None)) == ("Plain answer.", None)


def test_a_request_without_enable_thinking_gets_the_mode_its_model_trained_in(qwen3_tokenizer):
    engine = Engine(qwen3_tokenizer, {"base": None, "mybot": "base"}, Qwen3Script(qwen3_tokenizer), max_model_len=10**6)
    with serve_in_background(create_app(engine, thinking={"mybot": False})) as url:
        replies = {
            "trained default": client(url).chat.completions.create(model="mybot", messages=ask("hi")),
            "asked": client(url).chat.completions.create(
                model="mybot", messages=ask("hi"), extra_body={"chat_template_kwargs": {"enable_thinking": True}}
            ),
            "base": client(url).chat.completions.create(model="base", messages=ask("hi")),
        }
    answers = {k: (r.choices[0].message.content, getattr(r.choices[0].message, "reasoning_content", None))
               for k, r in replies.items()}  # fmt: skip
    assert answers == {
        "trained default": ("Plain answer.", None),  # the prompt ended in the empty think block
        "asked": ("Hello! How can I help?", "The user greets me."),
        "base": ("Hello! How can I help?", "The user greets me."),  # the template's own default
    }


def test_tool_calls_then_tool_results_in_the_next_turn(scripted):
    url, _ = scripted
    messages = ask("What is the weather in Paris?")
    reply = client(url).chat.completions.create(model="qwen3-scripted", messages=messages, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning_content == "I need the weather tool."
    [call] = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function",
        "get_weather",
        {"city": "Paris"},
    )

    chunks = list(
        client(url).chat.completions.create(model="qwen3-scripted", messages=messages, tools=TOOLS, stream=True)
    )
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.index, t.function.name, t.function.arguments) for t in streamed] == [
        (0, "get_weather", call.function.arguments)
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    follow_up = messages + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22°C"},
    ]
    answer = client(url).chat.completions.create(model="qwen3-scripted", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "It is 22°C in Paris."
    assert answer.choices[0].finish_reason == "stop"


# --- concurrency ----------------------------------------------------------------------------------------


def test_sixteen_concurrent_streaming_clients_all_complete(real):
    url, engine = real
    prompts = [f"Question number {i}" for i in range(16)]

    def stream(prompt: str) -> tuple[str, str | None]:
        chunks = list(
            client(url).chat.completions.create(
                model="tuned", messages=ask(prompt), max_tokens=6, temperature=0, stream=True
            )
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(stream, prompts, timeout=120))
    assert results == [(expected(engine, "tuned", p, 6), "length") for p in prompts]


def test_requests_join_a_running_batch_with_their_own_parameters_and_a_disconnect_leaves_it(real, tiny_qwen3_dir):
    url, engine = real
    batcher = engine.source.__self__
    base = str(tiny_qwen3_dir)
    asks = [
        (base, "Hello", SamplingParams(max_new_tokens=5, temperature=0)),
        ("tuned", "Hello", SamplingParams(max_new_tokens=9, temperature=0)),
        ("tuned", "Count", SamplingParams(max_new_tokens=8, temperature=1.0, top_k=40, seed=3)),
    ]
    alone = [engine.chat([Message("user", text)], params, model=m).result() for m, text, params in asks]
    stop = alone[1].content[2:5]
    asks[1] = ("tuned", "Hello", SamplingParams(max_new_tokens=9, temperature=0, stop=(stop,)))
    long = client(url).chat.completions.create(
        model="tuned", messages=ask("Go on and on"), max_tokens=4000, temperature=0, stream=True
    )
    next(iter(long)), next(iter(long))
    assert batcher.running == 1

    def send(item: tuple[str, str, SamplingParams]) -> tuple[str, str]:
        model, text, params = item
        reply = client(url).chat.completions.create(
            model=model,
            messages=ask(text),
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            seed=params.seed,
            extra_body={"top_k": params.top_k},
            stop=list(params.stop) or None,
        )
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(send, asks, timeout=60))
    assert answers == [
        (alone[0].content, "length"),
        (alone[1].content[: alone[1].content.find(stop)], "stop"),
        (alone[2].content, "length"),
    ]
    assert batcher.running == 1  # they joined the long generation's batch and left it; it still runs
    long.close()
    deadline = time.monotonic() + 10
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.running == 0


def health_becomes(url: str, expected: dict[str, object], seconds: float = 10.0) -> dict[str, object]:
    """Poll /health until it equals `expected` (or the time is up); return the last answer."""
    deadline = time.monotonic() + seconds
    while (state := httpx.get(f"{url}/health", timeout=TIMEOUT).json()) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return state


def test_a_client_that_disconnects_mid_stream_does_not_stall_the_others(scripted):
    url, script = scripted
    slow = client(url).chat.completions.create(
        model="qwen3-scripted", messages=ask("slow"), max_tokens=100_000, stream=True
    )
    chunks = iter(slow)
    for _ in range(3):
        next(chunks)
    # Another request runs beside the slow one rather than behind it.
    assert client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi")).choices[0].message.content
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).json() == {"status": "ok", "running": 1, "waiting": 0}
    slow.close()  # the slow client goes away after 3 chunks of 100,000
    assert script.slow_closed.wait(10)
    idle = {"status": "ok", "running": 0, "waiting": 0}
    assert health_becomes(url, idle) == idle


def test_a_failing_generation_is_reported_and_the_next_request_is_served(scripted):
    url, _ = scripted
    with pytest.raises(openai.InternalServerError) as caught:
        client(url).chat.completions.create(model="qwen3-scripted", messages=ask("explode"))
    assert caught.value.status_code == 500
    assert caught.value.body["message"] == "internal error: the GPU caught fire"
    with pytest.raises(openai.APIError, match="generation failed: the GPU caught fire"):
        list(client(url).chat.completions.create(model="qwen3-scripted", messages=ask("explode"), stream=True))
    reply = client(url).chat.completions.create(model="qwen3-scripted", messages=ask("hi"))
    assert reply.choices[0].message.content == "Hello! How can I help?"


# --- vLLM / SGLang launchers ---------------------------------------------------------------------------


@pytest.fixture
def no_key_env(monkeypatch):
    """No API key in the environment (launch lines and warnings depend on it)."""
    for name in ("TUNEFORGE_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["serve", *args])
    return result.exit_code, result.output


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A folder with a Qwen3 config.json (the launcher reads only the model type)."""
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return folder


def fake_adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    return folder


def test_vllm_dry_run_for_a_merged_model(no_key_env, model_dir):
    code, output = run_cli(
        "--model",
        str(model_dir),
        "--engine",
        "vllm",
        "--dry-run",
        "--served-model-name",
        "mybot",
        "--port",
        "9000",
        "--max-model-len",
        "8192",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.85",
        "--api-key",
        "secret",
    )
    assert code == 0, output
    assert output.strip() == (
        f"VLLM_API_KEY=*** vllm serve {model_dir} --served-model-name mybot --host 127.0.0.1 --port 9000 "
        "--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes "
        "--tensor-parallel-size 2 --max-model-len 8192 --gpu-memory-utilization 0.85"
    )


def test_api_key_comes_from_flag_file_or_environment(no_key_env, tmp_path):
    assert resolve_api_key(None, None) is None
    no_key_env.setenv("VLLM_API_KEY", "from-vllm-env")
    assert resolve_api_key(None, None) == "from-vllm-env"
    no_key_env.setenv("TUNEFORGE_API_KEY", "from-our-env")
    assert resolve_api_key(None, None) == "from-our-env"
    assert resolve_api_key("from-flag", None) == "from-flag"
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_api_key(None, tmp_path / "key") == "from-file"
    (tmp_path / "empty").write_text("\n")
    for flag, file, message in [
        ("k", tmp_path / "key", "give the API key once: --api-key or --api-key-file, not both"),
        (None, tmp_path / "empty", f"--api-key-file {tmp_path / 'empty'}: the file is empty"),
        (None, tmp_path / "absent", f"--api-key-file {tmp_path / 'absent'}: cannot read it"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            resolve_api_key(flag, file)


def test_the_key_is_never_printed_and_an_open_server_without_key_warns(no_key_env, model_dir, tmp_path):
    (tmp_path / "key").write_text("file-secret")
    no_key_env.setenv("TUNEFORGE_API_KEY", "env-secret")
    runs = {
        "sglang": run_cli("--model", str(model_dir), "--engine", "sglang", "--dry-run", "--api-key", "flag-secret"),
        "vllm": run_cli("--model", str(model_dir), "--engine", "vllm", "--dry-run", "--host", "0.0.0.0"),
        "builtin": run_cli(
            "--model", str(model_dir), "--engine", "transformers", "--dry-run", "--api-key-file", str(tmp_path / "key")
        ),
    }
    for code, output in runs.values():
        assert code == 0, output
        assert "secret" not in output and "warning" not in output
    assert runs["sglang"][1].strip().endswith("--tool-call-parser qwen25 --api-key ***")
    assert runs["vllm"][1].startswith("VLLM_API_KEY=*** vllm serve")

    no_key_env.delenv("TUNEFORGE_API_KEY")
    code, output = run_cli("--model", str(model_dir), "--engine", "transformers", "--dry-run", "--host", "0.0.0.0")
    assert code == 0
    assert output.splitlines()[0] == (
        "warning: serving on 0.0.0.0 without an API key: anyone who can reach this port can use the model; "
        "set TUNEFORGE_API_KEY or pass --api-key-file"
    )
    code, output = run_cli("--model", str(model_dir), "--engine", "transformers", "--dry-run", "--host", "::1")
    assert (code, output.count("warning")) == (0, 0)


def test_vllm_and_sglang_dry_run_for_base_plus_adapters(no_key_env, model_dir, tmp_path):
    a, b = fake_adapter(tmp_path / "a", 8), fake_adapter(tmp_path / "b", 40)
    flags = ["--model", str(model_dir), "--adapter", f"alpha={a}", "--adapter", f"beta={b}", "--dry-run"]
    code, output = run_cli(*flags, "--engine", "vllm")
    assert code == 0, output
    assert output.strip() == (
        f"vllm serve {model_dir} --served-model-name {model_dir} --host 127.0.0.1 --port 8000 "
        f"--enable-lora --lora-modules alpha={a} beta={b} --max-lora-rank 64 "
        "--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes"
    )
    code, output = run_cli(*flags, "--engine", "sglang", "--max-model-len", "4096")
    assert code == 0, output
    assert output.strip() == shlex.join(
        [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            str(model_dir),
            "--served-model-name",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "8000",
            "--enable-lora",
            "--lora-paths",
            f"alpha={a}",
            f"beta={b}",
            "--reasoning-parser",
            "qwen3",
            "--tool-call-parser",
            "qwen25",
            "--context-length",
            "4096",
        ]
    )


def test_vllm_dry_run_for_a_lora_run_folder(no_key_env, tmp_path):
    from tuneforge.config import save_config, validate

    run = tmp_path / "mybot"
    config = validate(
        {
            "model": {"name_or_path": "Qwen/Qwen3-8B"},
            "data": {"datasets": [{"path": "d.json"}]},
            "output": {"dir": str(run)},
        }
    )
    save_config(config, run / "config.yaml")
    adapter = fake_adapter(run / "adapter", 8)
    (adapter / "tokenizer_config.json").write_text("{}")
    code, output = run_cli("--run", str(run), "--engine", "vllm", "--dry-run")
    assert code == 0, output
    assert output.strip() == (
        f"vllm serve Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B --host 127.0.0.1 --port 8000 "
        f"--tokenizer {adapter} --enable-lora --lora-modules mybot={adapter} "
        "--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes"
    )


def test_vllm_dry_run_for_a_qlora_run_quantizes_its_base_and_defaults_to_its_trained_mode(no_key_env, tmp_path):
    from test_trained_defaults import make_run

    run = make_run(tmp_path / "qbot", "Qwen/Qwen3-8B", {"type": "qlora"}, ["off"])
    code, output = run_cli("--run", str(run), "--engine", "vllm", "--dry-run")
    assert code == 0, output
    assert output.strip() == (
        f"vllm serve Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B --host 127.0.0.1 --port 8000 "
        f"--enable-lora --lora-modules qbot={run / 'adapter'} "
        "--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes "
        """--quantization bitsandbytes --default-chat-template-kwargs '{"enable_thinking": false}'"""
    )
    code, output = run_cli("--run", str(run), "--engine", "transformers", "--dry-run", "--no-quantize")
    assert code == 0, output
    assert output.splitlines()[-1] == (
        "qbot: thinking off by default (the mode it trained in), unless a request sets "
        "chat_template_kwargs.enable_thinking"
    )
    code, output = run_cli("--run", str(run), "--engine", "vllm", "--dry-run", "--no-quantize")
    assert "--quantization" not in output


@needs_assets
def test_templates_that_open_think_in_the_prompt_get_the_r1_reasoning_parser(no_key_env, tmp_path, qwen3_tokenizer):
    import copy

    qwq = copy.deepcopy(qwen3_tokenizer)
    qwq.chat_template = (ASSETS / "chat-templates" / "Qwen-QwQ-32B.jinja").read_text()
    folder = tmp_path / "qwq"
    qwq.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))  # QwQ-32B's: no "qwen3" to go by
    parsers = {}
    for engine in ("vllm", "sglang"):
        code, output = run_cli("--model", str(folder), "--engine", engine, "--dry-run")
        assert code == 0, output
        parsers[engine] = output.split("--reasoning-parser ")[1].split()[0]
    assert parsers == {"vllm": "deepseek_r1", "sglang": "deepseek-r1"}
    code, output = run_cli("--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--engine", "vllm", "--dry-run")
    assert "--reasoning-parser deepseek_r1 " in output  # a hub id not downloaded: judged by its name


@needs_assets
def test_r1_0528_qwen3_writes_its_own_think_so_it_gets_the_qwen3_parser(no_key_env, tmp_path, qwen3_tokenizer):
    import copy

    from tuneforge.infer.parse import split_output

    r1 = copy.deepcopy(qwen3_tokenizer)
    r1.chat_template = (
        Path(__file__).parent / "data/chat-templates/deepseek-ai-DeepSeek-R1-0528-Qwen3-8B.jinja"
    ).read_text()
    folder = tmp_path / "r1-0528"
    r1.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    code, output = run_cli("--model", str(folder), "--engine", "vllm", "--dry-run")
    assert code == 0 and "--reasoning-parser qwen3 " in output, output
    code, output = run_cli("--model", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "--engine", "vllm", "--dry-run")
    assert "--reasoning-parser qwen3 " in output  # by name, the same
    # The built-in engine splits it the same way: the prompt ends at the assistant header, the output opens <think>.
    prompt = r1.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<｜User｜>hi<｜Assistant｜>")
    assert split_output(prompt, "<think>\nplan it\n</think>\n\ndone") == ("plan it", "done")


def test_offline_vllm_output_is_split_as_the_built_in_engine_splits_it():
    from tuneforge.infer.parse import split_output

    opened = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"  # QwQ / R1: the prompt opened it
    assert split_output(opened, "plan it\n</think>\n\ndone") == ("plan it", "done")
    qwen3 = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert split_output(qwen3, "<think>\nplan it\n</think>\n\ndone") == ("plan it", "done")
    assert split_output(qwen3, "done") == (None, "done")


def test_max_num_seqs_and_engine_args_reach_vllm_and_sglang(no_key_env, model_dir):
    extra = ("--max-num-seqs", "4", "--engine-arg=--enable-prefix-caching", "--engine-arg=--load-format bitsandbytes")
    code, output = run_cli("--model", str(model_dir), "--engine", "vllm", "--dry-run", *extra)
    assert code == 0, output
    assert output.strip().endswith(
        "--tool-call-parser hermes --max-num-seqs 4 --enable-prefix-caching --load-format bitsandbytes"
    )
    code, output = run_cli("--model", str(model_dir), "--engine", "sglang", "--dry-run", *extra)
    assert code == 0, output
    assert output.strip().endswith("--max-running-requests 4 --enable-prefix-caching --load-format bitsandbytes")
    code, output = run_cli("--model", str(model_dir), "--engine", "transformers", "--dry-run", *extra)
    note = "note: --engine-arg only apply to --engine vllm or sglang; the built-in engine ignores them"
    assert output.splitlines()[0] == note


def test_missing_engine_is_a_one_line_error(model_dir, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, output = run_cli("--model", str(model_dir), "--engine", "vllm")
    assert code == 2
    assert output.startswith("error: --engine vllm: vllm is not installed") and output.count("\n") == 1
    wide = {"COLUMNS": "300"}  # the message is one line; a narrow terminal would wrap its box
    refused = CliRunner().invoke(cli, ["serve", "--model", str(model_dir), "--engine", "tpu"], env=wide)
    assert refused.exit_code == 2 and "'tpu' is not one of 'auto', 'transformers', 'vllm', 'sglang'" in refused.output


def test_builtin_dry_run_names_what_it_serves(no_key_env, model_dir):
    code, output = run_cli("--model", str(model_dir), "--engine", "transformers", "--dry-run", "--port", "8123")
    assert (code, output.strip()) == (0, f"built-in engine: serving {model_dir} at http://127.0.0.1:8123/v1")
