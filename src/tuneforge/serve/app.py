"""The built-in OpenAI-compatible server: FastAPI over the inference engine.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (JSON or SSE stream).
Answers follow vLLM's shape with `--reasoning-parser qwen3` and a hermes tool parser: `reasoning_content`
beside `content` (stream deltas too), `tool_calls` with `finish_reason: "tool_calls"`. Up to --max-num-seqs
generations run together, batched step by step by the engine; the rest wait in arrival order (serve/worker.py)
and a full queue is answered 429 with `Retry-After`. With an API key, every /v1
request must send it as a Bearer token (401 otherwise); /health stays open for load-balancer probes, as in vLLM.
Limits on what one request may ask (its own chat template, default max tokens) are in `ServerLimits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tuneforge.data.conversation import ToolCall
from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatResult
from tuneforge.infer.engine import Engine, Generation
from tuneforge.serve.protocol import ChatRequest, CompletionRequest, ServerLimits
from tuneforge.serve.worker import Job, QueueFull, Worker

RETRY_AFTER_S = 1  # what a 429 asks the client to wait: a batch step frees places within about a second


class APIError(Exception):
    """An error answered with an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, _error_body(message, type, param, code), headers


def _error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    limits: ServerLimits = ServerLimits(),
    thinking: Mapping[str, bool] | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine`; with `api_key`, /v1 routes require `Authorization: Bearer KEY`.

    `thinking`: served name -> the `enable_thinking` of a request that sets none (the mode its run trained in).
    """
    thinking = dict(thinking or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.worker = Worker(max_queued=limits.max_queued_requests, max_running=limits.max_num_seqs)
        yield
        app.state.worker.close()

    app = FastAPI(title="tuneforge", lifespan=lifespan)
    _add_error_handlers(app)
    router = APIRouter(prefix="/v1", dependencies=[Depends(_key_check(api_key))])
    created = int(time.time())

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        worker: Worker = request.app.state.worker
        return {"status": "ok", "running": worker.running, "waiting": worker.waiting}

    @router.get("/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "tuneforge",
                "parent": parent,
                "max_model_len": engine.max_model_len,
            }
            for name, parent in engine.models.items()
        ]
        return {"object": "list", "data": data}

    @router.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        if body.custom_template() and not limits.trust_request_chat_template:
            raise APIError(
                400,
                "a request's own chat_template is refused (it runs arbitrary Jinja on the server); the model's "
                "template is used, or start the server with --trust-request-chat-template",
                param="chat_template",
            )
        template_kwargs = {**(body.chat_template_kwargs or {})}
        if body.model in thinking:
            template_kwargs.setdefault("enable_thinking", thinking[body.model])
        if body.chat_template:
            template_kwargs["chat_template"] = body.chat_template
        generation = await _start(
            engine,
            body.model,
            lambda: engine.chat(
                [m.to_message() for m in body.messages],
                body.sampling(),
                model=body.model,
                tools=body.tools,
                parse_tools=bool(body.tools) and body.tool_choice != "none",
                template_kwargs=template_kwargs,
                default_max_tokens=limits.max_tokens_default,
            ),
        )
        return await _respond(request, generation, body, "chat.completion", _chat_choice, _chat_chunks)

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        generation = await _start(
            engine,
            body.model,
            lambda: engine.complete(
                body.text(), body.sampling(), model=body.model, default_max_tokens=limits.max_tokens_default
            ),
        )
        return await _respond(request, generation, body, "text_completion", _text_choice, _completion_chunks)

    app.include_router(router)
    return app


def _key_check(api_key: str | None) -> Callable[..., Any]:
    async def check(authorization: str | None = Header(None)) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(
                401,
                "invalid or missing API key: send the header 'Authorization: Bearer KEY' with the "
                "key given to --api-key",
                type="authentication_error",
                code="invalid_api_key",
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        message = "; ".join(f"{where}: {msg}" for where, msg in problems) or "malformed request body"
        return JSONResponse(_error_body(message, "invalid_request_error", problems[0][0] if problems else None), 400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_error_body(f"internal error: {exc}", "internal_error"), 500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(_error_body(str(exc.detail), "invalid_request_error"), exc.status_code)


def _problem(error: dict[str, Any]) -> tuple[str, str]:
    """(field path, what is wrong) for one validation error; bad JSON is reported against the body."""
    if error["type"] == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "not JSON")
        return "body", f"invalid JSON ({reason} at character {error['loc'][-1]})"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body", error["msg"]


async def _start(engine: Engine, model: str, make: Callable[[], Generation]) -> Generation:
    """Render and tokenize off the event loop; unknown model -> 404, a request the engine refuses -> 400."""
    if model not in engine.models:
        raise APIError(
            404,
            f"The model `{model}` does not exist; served: {', '.join(engine.names)}",
            param="model",
            code="model_not_found",
        )
    try:
        return await run_in_threadpool(make)
    except UserError as exc:
        raise APIError(400, str(exc)) from None


async def _finished(job: Job, request: Request) -> bool:
    """Wait for a non-streamed job; False (and the job cancelled) when its client went away first."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        job.cancel()

    watcher = asyncio.create_task(watch())
    try:
        async for _ in job.deltas():
            pass
    except asyncio.CancelledError:  # the server is shutting down
        job.cancel()
        raise
    finally:
        watcher.cancel()
    return not job.cancelled.is_set()


Chunks = Callable[[Job, dict[str, Any], bool], AsyncIterator[dict[str, Any]]]


async def _respond(
    request: Request,
    generation: Generation,
    body: ChatRequest | CompletionRequest,
    kind: str,
    choice: Callable[[ChatResult], dict[str, Any]],
    chunks: Chunks,
) -> Response:
    """Queue the generation; answer with an SSE stream of `chunks`, or with one `choice` once it is done."""
    prefix = {"chat.completion": "chatcmpl", "text_completion": "cmpl"}[kind]  # OpenAI's id prefixes
    head = {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": generation.model,
    }
    try:
        job = request.app.state.worker.submit(generation)
    except QueueFull as exc:
        raise APIError(
            429,
            f"the server is busy: {exc}; retry after {RETRY_AFTER_S} s",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    if body.stream:
        return _sse(job, chunks(job, head, body.include_usage))
    try:
        if not await _finished(job, request):
            return Response(status_code=499)  # nobody is listening any more
    except Exception as exc:  # noqa: BLE001 -- answered here: raised to Starlette, the error would close the connection
        return JSONResponse(_error_body(f"internal error: {exc}", "internal_error"), 500)
    return JSONResponse({**head, "choices": [choice(generation.result())], "usage": _usage(generation)})


def _chat_choice(result: ChatResult) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": result.content if result.content or not result.tool_calls else None,
        "reasoning_content": result.reasoning,
        "tool_calls": [_tool_call(call) for call in result.tool_calls],
    }
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}


def _text_choice(result: ChatResult) -> dict[str, Any]:
    return {"index": 0, "text": result.content, "logprobs": None, "finish_reason": result.finish_reason}


def _usage(generation: Generation) -> dict[str, int]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_call(call: ToolCall) -> dict[str, Any]:
    # ensure_ascii=False matches the chat template's tojson, so the call renders back token-exact next turn.
    arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


async def _chat_chunks(job: Job, head: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    calls = 0
    async for piece in job.deltas():
        delta: dict[str, Any] = {}
        if piece.reasoning:
            delta["reasoning_content"] = piece.reasoning
        if piece.content:
            delta["content"] = piece.content
        if piece.tool_calls:
            delta["tool_calls"] = [{"index": calls + i, **_tool_call(c)} for i, c in enumerate(piece.tool_calls)]
            calls += len(piece.tool_calls)
        yield chunk(delta)
    yield chunk({}, job.generation.finish_reason)
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(job.generation)}


async def _completion_chunks(job: Job, head: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    async for piece in job.deltas():
        yield chunk(piece.content)
    yield chunk("", job.generation.finish_reason)
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(job.generation)}


def _sse(job: Job, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: the chunks, an error event if the generation fails, then [DONE]."""

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            async for data in chunks:
                yield event(data)
        except Exception as exc:  # noqa: BLE001 -- after the headers an error can only travel in the stream
            yield event(_error_body(f"generation failed: {exc}", "internal_error"))
        finally:
            job.cancel()  # on a disconnect Starlette cancels this task: free the worker at once
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def run_server(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServerLimits = ServerLimits(),
    thinking: Mapping[str, bool] | None = None,
) -> None:
    """Serve `engine` until interrupted (`thinking`: as create_app takes it)."""
    import uvicorn

    from tuneforge.quiet import is_verbose

    # Our own line says where the server listens; uvicorn's start-up banner and access log come with --verbose.
    app = create_app(engine, api_key=api_key, limits=limits, thinking=thinking)
    level = "info" if is_verbose() else "warning"
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=5, log_level=level)


def tcp_listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket for uvicorn's `sockets=`; port 0: the OS picks a free one, with no race before binding."""
    # The protocol is named: asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP, and a plain
    # socket.socket() has proto 0. Without it, a small reply on a kept-alive connection waited for the client's
    # delayed ACK: 44 ms per request (bench/synth.py measured 0.25 s for a 0.2 s reply).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, port))
    return sock


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> Iterator[str]:
    """Run `app` with uvicorn in a thread (tests, benchmarks, notebooks); yields its base URL."""
    import uvicorn

    sock = tcp_listener(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tuneforge-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{sock.getsockname()[1]}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
