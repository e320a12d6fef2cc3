"""Requests to an OpenAI-compatible endpoint for synth: bounded concurrency, journal first, JSON replies checked.

- At most `concurrency` requests in flight (an asyncio semaphore over an async `openai` client per server: the
  model's, and the weak model's when it has its own); the count is
  measured (mean and peak in flight) so a limit that is not reached shows in the report. The client runs on
  aiohttp, the transport the `openai` package offers "for improved concurrency performance": its default
  connection pool checks every idle connection on each request.
- Retries on 429, 5xx and timeouts are the `openai` client's own (exponential backoff, Retry-After honoured).
- JSON is asked for with `response_format: json_schema` (vLLM, SGLang, OpenAI, `tuneforge serve` honour it);
  a server that refuses the field (400 naming it) is asked by the prompt alone from then on.
- Replies are split reasoning-safe (reasoning_content, or an inline <think> block, through infer/parse.py),
  the answer part parsed and schema-checked (pydantic); an invalid reply is asked again once with the error
  fed back, then the item fails with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneforge.errors import UserError
from tuneforge.infer.parse import OutputParser
from tuneforge.infer.remote import api_base
from tuneforge.synth.config import SynthConfig
from tuneforge.synth.journal import Journal, request_key

FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class Failed(Exception):
    """A request or reply that did not give a usable result; the message is the report's reason."""


@dataclass
class Reply:
    """The parts of a finished reply."""

    content: str
    reasoning: str | None
    finish_reason: str
    tokens_in: int
    tokens_out: int


@dataclass
class Meter:
    """Request counts, tokens and how many requests were in flight over time."""

    sent: int = 0
    cached: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    in_flight: int = 0
    peak: int = 0
    busy_area: float = 0.0  # integral of in_flight over time
    first: float | None = None
    last: float = 0.0
    by_step: dict[str, int] = field(default_factory=dict)

    def change(self, delta: int) -> None:
        """Count a request starting (+1) or ending (-1)."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.busy_area += self.in_flight * (now - self.last if self.last else 0.0)
        self.in_flight += delta
        self.peak = max(self.peak, self.in_flight)
        self.last = now

    @property
    def span(self) -> float:
        """Seconds from the first send to the last reply of this run."""
        return self.last - (self.first or self.last)

    @property
    def mean_in_flight(self) -> float:
        """Mean requests in flight from the first send to the last reply."""
        return self.busy_area / self.span if self.span > 0 else 0.0


class Client:
    """Journaled chat requests to one endpoint (see the module docstring)."""

    def __init__(self, cfg: SynthConfig, key: str, journal: Journal) -> None:
        import openai

        access = cfg.model
        self.cfg, self.journal, self.meter = cfg, journal, Meter()
        self._clients = {
            endpoint: openai.AsyncOpenAI(
                base_url=api_base(endpoint),
                api_key=key,
                timeout=access.timeout,
                max_retries=access.max_retries,
                http_client=openai.DefaultAioHttpClient(),
            )
            for endpoint in {access.endpoint, *self._other_endpoints(cfg)}
        }
        self._slots = asyncio.Semaphore(access.concurrency)
        self._schema_ok = access.structured_output != "prompt"

    @staticmethod
    def _other_endpoints(cfg: SynthConfig) -> list[str]:
        """The weak model's server, when preference pairs take it from another one (same key, same limits)."""
        weak = cfg.preference.weak if cfg.preference is not None else None
        return [weak.endpoint] if weak is not None and weak.endpoint else []

    async def close(self) -> None:
        """Close the HTTP connections."""
        for client in self._clients.values():
            await client.close()

    async def ask_json(
        self,
        chunk: str,
        step: str,
        model: str,
        messages: list[dict[str, Any]],
        schema: type[BaseModel],
        temperature: float | None = None,
    ) -> tuple[BaseModel, Reply]:
        """The reply parsed as `schema`; one retry with the validation error fed back, then Failed."""
        reply = await self.ask(chunk, step, model, messages, schema=schema, temperature=temperature)
        try:
            return parse_json(reply.content, schema), reply
        except ValueError as exc:
            error = str(exc)
        retry = [
            *messages,
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": f"That reply is not valid: {error}. Reply again with the JSON only."},
        ]
        second = await self.ask(chunk, step, model, retry, schema=schema, temperature=temperature)
        try:
            return parse_json(second.content, schema), second
        except ValueError as exc:
            raise Failed(f"{step}: invalid JSON after one retry ({_kind(str(exc))})") from None

    async def ask(
        self,
        chunk: str,
        step: str,
        model: str,
        messages: list[dict[str, Any]],
        *,
        schema: type[BaseModel] | None = None,
        temperature: float | None = None,
        endpoint: str | None = None,
        seed: int | None = None,
    ) -> Reply:
        """One request: from the journal when it was answered before, else sent (within budget) and journaled.
        `endpoint`: another server than model.endpoint; `seed`: a second, different sample of the same prompt."""
        key = request_key(chunk, step, messages, model)
        entry = self.journal.get(key)
        if entry is None:
            budget = self.cfg.budget.max_tokens
            if budget is not None and self.meter.tokens_in + self.meter.tokens_out >= budget:
                raise Failed(f"{step}: token budget reached (budget.max_tokens)")
            entry = await self._send(key, step, model, messages, schema, temperature, endpoint, seed)
            await self.journal.append(entry)
            self.meter.sent += 1
            self.meter.by_step[step] = self.meter.by_step.get(step, 0) + 1
        else:
            self.meter.cached += 1
        self.meter.tokens_in += entry["tokens_in"]
        self.meter.tokens_out += entry["tokens_out"]
        return Reply(
            entry["content"], entry["reasoning"], entry["finish_reason"], entry["tokens_in"], entry["tokens_out"]
        )

    async def _send(
        self,
        key: str,
        step: str,
        model: str,
        messages: list[dict[str, Any]],
        schema: type[BaseModel] | None,
        temperature: float | None,
        endpoint: str | None,
        seed: int | None,
    ) -> dict[str, Any]:
        import openai

        access = self.cfg.model
        client = self._clients[endpoint or access.endpoint]
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": access.max_tokens,
            "temperature": access.temperature if temperature is None else temperature,
        }
        if seed is not None:
            request["seed"] = seed
        if access.thinking is not None:
            request["chat_template_kwargs"] = {"enable_thinking": access.thinking}
        async with self._slots:
            self.meter.change(+1)
            try:
                while True:
                    if schema is not None and self._schema_ok:
                        request["response_format"] = _response_format(schema)
                    try:
                        # The client's documented raw call: `chat.completions.create` first walks the messages
                        # through its typed-parameter transform and builds typed reply objects, about 1 ms of
                        # CPU per request, which at 64 in flight starved the event loop (bench/synth.py).
                        response = await client.post("/chat/completions", body=request, cast_to=dict)
                        break
                    except openai.BadRequestError as exc:
                        if "response_format" in request and self.cfg.model.structured_output == "auto":
                            # The server does not take structured outputs: the prompt asks for the JSON anyway.
                            self._schema_ok = False
                            del request["response_format"]
                            continue
                        raise Failed(f"{step}: the server answered 400 ({_first_line(exc.message)})") from None
            except openai.AuthenticationError:
                raise UserError(
                    f"{access.endpoint}: the server refused the API key; set model.api_key_env or model.api_key_file"
                ) from None
            except openai.APITimeoutError:
                raise Failed(f"{step}: timed out after {access.max_retries} retries") from None
            except openai.APIConnectionError as exc:
                raise Failed(f"{step}: cannot reach the server ({_first_line(str(exc.__cause__ or exc))})") from None
            except openai.APIStatusError as exc:
                raise Failed(f"{step}: the server answered HTTP {exc.status_code}") from None
            finally:
                self.meter.change(-1)
        try:
            choice = response["choices"][0]
            message = choice["message"]
        except (TypeError, KeyError, IndexError):
            raise Failed(f"{step}: the server's reply is not a chat completion") from None
        reasoning, content = split_reasoning(
            message.get("content") or "", message.get("reasoning_content") or message.get("reasoning")
        )
        usage = response.get("usage") or {}
        return {
            "key": key,
            "content": content,
            "reasoning": reasoning,
            "finish_reason": choice.get("finish_reason") or "stop",
            "tokens_in": usage.get("prompt_tokens") or 0,
            "tokens_out": usage.get("completion_tokens") or 0,
            "time": time.time(),
        }


def split_reasoning(text: str, reasoning: str | None) -> tuple[str | None, str]:
    """(reasoning, answer): the server's reasoning_content, else an inline <think> block split off the text."""
    parser = OutputParser(think=True)
    parts = [parser.feed(text), parser.finish()]
    inline = "".join(p.reasoning for p in parts)
    answer = "".join(p.content for p in parts).strip()
    return (reasoning.strip() if reasoning else None) or (inline.strip() or None), answer


def parse_json(text: str, schema: type[BaseModel]) -> BaseModel:
    """The reply (reasoning already split off; a ```json fence allowed) validated as `schema`, else ValueError."""
    body = text.strip()
    fenced = FENCE.match(body)
    try:
        return schema.model_validate(json.loads(fenced.group(1) if fenced else body))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"does not match the schema ({problems})") from None


@functools.cache  # pydantic builds a schema in about 1 ms: once per reply type, not once per request
def _response_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}


def _kind(error: str) -> str:
    """The error's kind without its details, so the report groups like failures under one reason."""
    return error.split(" (")[0]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]
