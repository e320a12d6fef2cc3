"""A scripted OpenAI-compatible server for the synth tests and bench: deterministic replies, injected faults.

Every decision hashes the request's messages (the same prompt hash the synth journal keys on), so a run, a
killed-and-resumed run and a fresh run see the same replies. With `faults`:
- 10 % of prompts fail their first attempt: 429 with Retry-After, 500, or a reply slower than the client timeout;
- 5 % of JSON prompts get malformed JSON; half of those stay malformed when asked again with the error;
- answers carry reasoning in `reasoning_content` (a third), inline `<think>` (a third) or none;
- 5 % of prompts are slow (the tail).
The later steps are scripted too: reasoning written on request, follow-up questions, tags (with faults, a fifth
of the first tag replies name a tag outside the list, which the schema refuses), a weak model's answers (model
WEAK) and a second sample (a request with a seed); the judge's score of every (question, answer) is kept.
The server counts what it delivered, so tests can check exact accounting and that nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneforge.serve.app import tcp_listener

MODEL = "scripted"
WEAK = "weak"
FEEDBACK = "That reply is not valid"


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    """The synth journal's prompt hash of a request (tuneforge.synth.journal.request_key)."""
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def request_id(messages: list[dict[str, Any]], model: str, seed: int | None) -> str:
    """What the server counts a request by: its prompt hash, plus the model and seed when they are not the plain
    ones (a weak model's answer and a second sample share the answer's prompt)."""
    extra = "" if model == MODEL and seed is None else f":{model}:{seed}"
    return prompt_hash(messages) + extra


def journal_request_id(key: str) -> str:
    """The request_id of a synth journal key (chunk:step:prompt:model; the second sample is sent with seed 1)."""
    _, step, prompt, model = key.split(":", 3)
    seed = 1 if step == "second_answer" else None
    return prompt + ("" if model == MODEL and seed is None else f":{model}:{seed}")


def unit(text: str, salt: str) -> float:
    """A deterministic number in [0, 1) for `text`."""
    return int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:12], 16) / 16**12


@dataclass
class Ledger:
    """What the server did: every delivered 200 by prompt, the faults, and the pairs its judge passed."""

    delivered: list[str] = field(default_factory=list)  # prompt hashes of 200 replies, in order
    attempts: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    retry_gaps: list[tuple[float, float]] = field(default_factory=list)  # (Retry-After asked, seconds waited)
    hopeless_items: int = 0  # pairs that must fail: malformed twice (questions: its count; judge: 1)
    judged_pass: set = field(default_factory=set)  # (question, answer) the judge passed
    judged_fail: int = 0
    reasoned: list = field(default_factory=list)  # questions whose reasoning was asked for
    scores: dict = field(default_factory=dict)  # (question, answer) → (score, supported) of every valid judgement
    duplicates: int = 0  # near-duplicate questions injected
    in_flight: int = 0
    peak: int = 0


class ScriptedServer:
    """FastAPI app in a uvicorn thread; `url` to reach it, `ledger` for what it did."""

    def __init__(self, *, faults: bool = True, latency: float = 0.0, timeout_sleep: float = 1.5) -> None:
        self.faults, self.latency, self.timeout_sleep = faults, latency, timeout_sleep
        self.ledger = Ledger()
        self._last_429: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ScriptedServer:
        import uvicorn

        sock = tcp_listener()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="error", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def app(self) -> Any:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            key = request_id(body["messages"], body["model"], body.get("seed"))
            with self._lock:
                self.ledger.attempts[key] += 1
                attempt = self.ledger.attempts[key]
                self.ledger.in_flight += 1
                self.ledger.peak = max(self.ledger.peak, self.ledger.in_flight)
                if key in self._last_429:
                    asked, at = self._last_429.pop(key)
                    self.ledger.retry_gaps.append((asked, time.monotonic() - at))
            try:
                fault = self._fault(key, attempt)
                if fault == "429":
                    with self._lock:
                        self._last_429[key] = (0.3, time.monotonic())
                    return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"Retry-After": "0.3"})
                if fault == "500":
                    return JSONResponse({"error": {"message": "boom"}}, 500)
                if fault == "timeout":
                    await asyncio.sleep(self.timeout_sleep)  # past the client's timeout: it gives up and retries
                    return JSONResponse({"error": {"message": "too late"}}, 504)
                delay = self.latency + (0.4 if self.faults and unit(key, "slow") < 0.05 else 0.0)
                if delay:
                    await asyncio.sleep(delay)
                message = self._reply(body, key)
                if await request.is_disconnected():  # the client gave up (its timeout): not a delivered reply
                    return JSONResponse({"error": {"message": "gone"}}, 499)
                with self._lock:
                    self.ledger.delivered.append(key)
                usage = {"prompt_tokens": len(json.dumps(body["messages"])) // 4, "completion_tokens": 20}
                usage["total_tokens"] = usage["prompt_tokens"] + 20
                return {
                    "id": f"chatcmpl-{key}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            finally:
                with self._lock:
                    self.ledger.in_flight -= 1

        return app

    def _fault(self, key: str, attempt: int) -> str | None:
        if not self.faults or attempt > 1 or unit(key, "fault") >= 0.10:
            return None
        kind = ("429", "500", "timeout")[int(unit(key, "kind") * 3)]
        with self._lock:
            self.ledger.faults[kind] += 1
        return kind

    def _reply(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        messages = body["messages"]
        first = messages[0]["content"]
        retried = messages[-1]["content"].startswith(FEEDBACK)
        chunk = re.search(r"<text>\n(.*)\n</text>", first, re.DOTALL).group(1)  # type: ignore[union-attr]
        origin = prompt_hash(messages[:1])
        if '{"questions"' in first:
            count = int(re.search(r"(\d+)", first).group(1))  # type: ignore[union-attr]
            styled = re.search(r"in the form of (.*?), as |以“(.*?)”的形式", first)
            genre = styled and (styled.group(1) or styled.group(2))
            return self._json(self._questions(chunk, count, origin, genre), origin, retried, count)[0]
        if '{"score"' in first:
            return self._judge(first, origin, retried)
        if '{"question"' in first:
            turn = first.count("\nUser: ") + first.startswith("User: ")
            sentences = _sentences(chunk)
            asked = f"Follow-up {turn} ({origin[:6]}): and what about {sentences[turn % len(sentences)][:60]}?"
            return self._json({"question": asked}, origin, retried, 1)[0]
        if '{"tags"' in first:
            return self._tags(first, origin, retried)
        if "step-by-step reasoning" in first or "逐步推理" in first:
            question = re.search(r"(?:Question: |问题：)(.*?)\n\n", first, re.DOTALL).group(1)  # type: ignore[union-attr]
            with self._lock:
                self.ledger.reasoned.append(question)
            return {"role": "assistant", "content": reasoning_for(question)}
        if len(messages) > 1 and not retried:  # a follow-up turn: the question is the last message
            question, origin = messages[-1]["content"], prompt_hash(messages)
        else:
            question = first.rsplit("\n\n", 1)[1].split("：" if "问题：" in first else ": ", 1)[1]
        if body["model"] == WEAK:
            return {"role": "assistant", "content": weak_answer(question)}
        if body.get("seed") is not None:
            return {"role": "assistant", "content": second_answer(question)}
        answer = f"{question} — {_sentences(chunk)[0][:200]}"
        style = int(unit(origin, "reasoning") * 3)
        if style == 0:
            return {"role": "assistant", "content": answer, "reasoning_content": f"Looking for {question[:40]}."}
        if style == 1:
            return {"role": "assistant", "content": f"<think>\nThe text answers {question[:40]}.\n</think>\n\n{answer}"}
        return {"role": "assistant", "content": answer}

    def _judge(self, first: str, origin: str, retried: bool) -> dict[str, Any]:
        question = re.search(r"(?:Question: |问题：)(.*?)\n\n(?:Answer: |回答：)", first, re.DOTALL).group(1)  # type: ignore[union-attr]
        answer = first.split("Answer: " if "Answer: " in first else "回答：", 1)[1].rsplit("\n\n", 1)[0]
        score = 1 + int(unit(origin, "score") * 10)
        supported = unit(origin, "supported") >= 0.1
        message, valid = self._json({"score": score, "supported": supported, "reason": "ok"}, origin, retried, 1)
        if valid:
            with self._lock:
                self.ledger.scores[(question, answer)] = (score, supported)
                if score >= 7 and supported:
                    self.ledger.judged_pass.add((question, answer))
                else:
                    self.ledger.judged_fail += 1
        return message

    def _tags(self, first: str, origin: str, retried: bool) -> dict[str, Any]:
        listed = re.search(r"(?:chosen only from: |只能从这些标签中选：)(.*?)[.。]\n", first)
        if listed is None:
            return self._json({"tags": [free_tag(origin)]}, origin, retried, 1)[0]
        labels = listed.group(1).split(", ")
        if self.faults and not retried and unit(origin, "badtag") < 0.2:
            return {"role": "assistant", "content": json.dumps({"tags": ["not-a-listed-tag"]})}
        return self._json({"tags": [labels[int(unit(origin, "tag") * len(labels))]]}, origin, retried, 1)[0]

    def _questions(self, chunk: str, count: int, origin: str, genre: str | None) -> dict[str, Any]:
        sentences = _sentences(chunk)
        style = f" [{genre}]" if genre else ""  # a variation's questions name its genre
        asked = [
            f"Q{i + 1} ({origin[:6]}){style}: what does it say about {sentences[i % len(sentences)][:80]}?"
            for i in range(count)
        ]
        if count >= 2 and unit(origin, "dup") < 0.2:
            asked[1] = asked[0].upper()  # the same question in other case: removed as a near-duplicate
            with self._lock:
                self.ledger.duplicates += 1
        return {"questions": asked}

    def _malformed(self, origin: str) -> bool:
        return self.faults and unit(origin, "malformed") < 0.05

    def _json(self, payload: dict[str, Any], origin: str, retried: bool, items: int) -> tuple[dict[str, Any], bool]:
        """(reply, whether it is valid): malformed where scripted; half the JSON after an inline think block."""
        hopeless = self._malformed(origin) and unit(origin, "hopeless") < 0.5
        if self._malformed(origin) and (not retried or hopeless):
            if retried:
                with self._lock:
                    self.ledger.hopeless_items += items
            return {"role": "assistant", "content": json.dumps(payload)[:-7]}, False
        text = json.dumps(payload, ensure_ascii=False)
        if unit(origin, "jsonthink") < 0.5:
            text = f"<think>\nI will answer in JSON {{like this}}.\n</think>\n\n{text}"
        return {"role": "assistant", "content": text}, True


def reasoning_for(question: str) -> str:
    """The scripted reasoning step's reply for a question."""
    return f"Step 1: find where the text covers {question[:40]}. Step 2: state it."


def weak_answer(question: str) -> str:
    """The weak model's answer."""
    return f"Not sure about {question[:40]}."


def second_answer(question: str) -> str:
    """The second sample of an answer (a request with a seed)."""
    return f"{question} (in other words)"


def free_tag(origin: str) -> str:
    """The free tag of a tags prompt."""
    return f"topic-{origin[:4]}"


def _sentences(text: str) -> list[str]:
    parts = [s.strip() for s in re.split(r"(?<=[.!?。！？])\s*|\n+", text) if len(s.strip()) > 8]
    return parts or [text.strip()[:80] or "nothing"]
