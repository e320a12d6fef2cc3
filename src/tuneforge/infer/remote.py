"""Models behind an OpenAI-compatible server (`tuneforge serve`, vLLM, SGLang, a hosted API), and the API key.

`RemoteEngine` is a `ChatBackend` (infer/backend.py) through the official `openai` client, with at most
`concurrency` requests in flight; `Router` puts the models of several backends (a local run and an endpoint, two
runs) behind that one interface, so its callers stay unaware of where a model runs.

An OpenAI-compatible server returns text, not the log-probabilities of given tokens: `RemoteEngine.can_score` is
False, so callers refuse what needs them before anything runs. The `openai` client is imported only when an
endpoint is used: a local eval loads no network code. `resolve_api_key` is the one reading of the key, for the
server (`tuneforge serve`) and for clients (`client_api_key`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatBackend, ChatResult, GenerationOnly, SamplingParams, model_per_item
from tuneforge.infer.structured import openai_response_format

if TYPE_CHECKING:
    from tuneforge.data.conversation import Message

KEY_ENV = ("TUNEFORGE_API_KEY", "VLLM_API_KEY")  # read in this order when no flag gives the key (vLLM reads the 2nd)
OPENAI_KEY_ENV = "OPENAI_API_KEY"  # a client reads it last, as the openai client would
CLIENT_KEY_ENV = (*KEY_ENV, OPENAI_KEY_ENV)
NO_KEY = "EMPTY"  # what vLLM's examples send to a server without a key (the client refuses an empty one)


def is_url(text: str) -> bool:
    """Whether `text` is an http(s) URL (an --endpoint / --baseline value) rather than a path or keyword."""
    return urlparse(text).scheme in ("http", "https")


def api_base(url: str) -> str:
    """The client's base URL: `url` as given when it has a path (`…/v1`, `…/api/v4`), else `url` + `/v1`."""
    return url.rstrip("/") if urlparse(url).path.strip("/") else url.rstrip("/") + "/v1"


def resolve_api_key(flag: str | None, file: Path | None) -> str | None:
    """The API key from --api-key, --api-key-file, or TUNEFORGE_API_KEY / VLLM_API_KEY (None: no key)."""
    if flag is not None and file is not None:
        raise UserError("give the API key once: --api-key or --api-key-file, not both")
    if file is not None:
        try:
            key = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {file}: cannot read it ({exc.strerror})") from None
        if not key:
            raise UserError(f"--api-key-file {file}: the file is empty; write the key on its first line")
        return key
    if flag is not None:
        return flag
    return next((os.environ[name] for name in KEY_ENV if os.environ.get(name)), None)


def client_api_key(file: Path | None = None, env: str | None = None) -> str:
    """A client's key: the variable `env` where one is named, else `file`, else the first of CLIENT_KEY_ENV set."""
    if env is not None:
        if not os.environ.get(env):
            raise UserError(f"api_key_env: the environment variable {env} is not set; export it with the key")
        return os.environ[env]
    return resolve_api_key(None, file) or os.environ.get(OPENAI_KEY_ENV) or NO_KEY


class RemoteEngine(GenerationOnly):
    """Chat answers from served models of one OpenAI-compatible server, `concurrency` requests at a time."""

    tokenizer = None  # the server renders the prompt

    def __init__(
        self, url: str, models: Sequence[str], key: str, *, concurrency: int = 8, timeout: float = 600.0
    ) -> None:
        import openai

        if concurrency < 1:
            raise UserError(f"--concurrency {concurrency}: must be at least 1")
        self.url, self.models, self.concurrency = url, dict.fromkeys(models), concurrency
        self.no_scores = f"{url}: an OpenAI-compatible server gives no log-probabilities of given tokens"
        # Retries: the client's own (429 and 5xx with backoff, Retry-After honoured), so a busy server slows the
        # eval down rather than failing it.
        self._client = openai.OpenAI(base_url=api_base(url), api_key=key, timeout=timeout, max_retries=5)

    @property
    def names(self) -> list[str]:
        """The served names this engine asks for."""
        return list(self.models)

    def check(self) -> None:
        """Fail in one line, before any work, when the server is unreachable, refuses the key or lacks a model."""
        # No retries here: a server that is down or refuses the key is reported at once.
        served = [m.id for m in self._call(self._client.with_options(max_retries=0).models.list)]
        for model in self.models:
            if model not in served:
                raise UserError(
                    f"{self.url}: no model '{model}' is served there; served: {', '.join(served) or 'none'}"
                )

    def render(self, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> str:
        """The messages as sent, in JSON (the server applies its own chat template; the exact text stays there)."""
        return json.dumps(_openai_messages(messages), ensure_ascii=False)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> list[ChatResult]:
        """Answer every conversation through the server, `concurrency` at a time; results in input order."""
        params = params or SamplingParams()
        names = model_per_item(model, len(conversations))
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tuneforge-eval-remote")
        try:
            return list(
                pool.map(lambda conv, name: self._chat(conv, params, name, enable_thinking), conversations, names)
            )
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure, the requests not yet sent are dropped

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _chat(
        self, messages: Sequence[Message], params: SamplingParams, model: str | None, think: bool | None
    ) -> ChatResult:
        request: dict[str, Any] = {
            "model": model or self.names[-1],
            "messages": _openai_messages(messages),
            "temperature": params.temperature if params.temperature is not None else 0.0,
        }
        if params.max_new_tokens is not None:
            request["max_tokens"] = params.max_new_tokens
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = list(params.stop)
        if params.response_format is not None:
            request["response_format"] = openai_response_format(params.response_format)
        if think is not None:
            # vLLM's and tuneforge's way to reach the template's enable_thinking; only sent when asked for,
            # since a hosted API may refuse a field it does not know.
            request["extra_body"] = {"chat_template_kwargs": {"enable_thinking": think}}
        response = self._call(lambda: self._client.chat.completions.create(**request))
        choice = response.choices[0]
        message = choice.message
        # vLLM's reasoning parsers fill `reasoning_content` (newer releases: `reasoning`); others leave the
        # <think> block in the content, which the eval's answer split handles.
        extra = message.model_extra or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        usage = response.usage
        return ChatResult(
            reasoning=reasoning,
            content=message.content or "",
            tool_calls=[],
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def _call(self, request: Any) -> Any:
        """`request()`, with the client's errors turned into one line naming the server and what to do."""
        import openai

        try:
            return request()
        except openai.AuthenticationError:
            raise UserError(
                f"{self.url}: the server refused the API key; give its key (--api-key-file FILE or TUNEFORGE_API_KEY; "
                "a judge's: api_key_env)"
            ) from None
        except openai.APIConnectionError as exc:
            cause = (str(exc.__cause__ or exc).splitlines() or [""])[0]
            raise UserError(f"{self.url}: cannot reach the server ({cause}); is it running?") from None
        except openai.APIStatusError as exc:
            raise UserError(f"{self.url}: the server answered {exc.status_code}: {_error_text(exc)}") from None


def _error_text(exc: Any) -> str:
    """The server's own message (the client keeps the `error` object of an OpenAI error body as `body`)."""
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    return (str(message or exc.message).splitlines() or [""])[0][:300]


def _openai_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class Router:
    """One backend over several: each name is routed to (its backend, the name it serves it as)."""

    def __init__(self, routes: dict[str, tuple[ChatBackend, str]], render_with: str) -> None:
        # Names of their own (the roles), since two backends may serve models under the same name.
        self.routes = routes
        self.models = {name: None for name in routes}
        self._render = routes[render_with][0]

    @property
    def names(self) -> list[str]:
        """Every routed name, in the order given."""
        return list(self.routes)

    @property
    def can_score(self) -> bool:
        """Whether every backend behind it can score."""
        return all(backend.can_score for backend, _ in self.routes.values())

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the backend that renders the prompts (None for an endpoint)."""
        return self._render.tokenizer

    def render(self, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> str:
        """The prompt as the fine-tuned model's backend renders it (the text the report shows)."""
        return self._render.render(messages, enable_thinking=enable_thinking)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> list[ChatResult]:
        """Each conversation answered by its model's backend (one batched call per backend); input order."""
        names = model_per_item(model, len(conversations), self.names[-1])
        results: list[Any] = [None] * len(conversations)
        for name, (backend, served) in self.routes.items():
            picked = [i for i, n in enumerate(names) if n == name]
            if picked:
                answers = backend.generate_batch(
                    [conversations[i] for i in picked], params, model=served, enable_thinking=enable_thinking
                )
                for i, answer in zip(picked, answers):
                    results[i] = answer
        return results

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], *, model: str | None = None) -> list[list[float]]:
        """Log-probabilities of token ids from the backend serving `model` (default: the last name)."""
        backend, served = self._route(model)
        return backend.score_ids(pairs, model=served)

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, model: str | None = None
    ) -> list[list[float]]:
        """Next-token log-probabilities of the candidates from the backend serving `model` (default: the last)."""
        backend, served = self._route(model)
        return backend.next_token_logprobs(prompts, candidates, model=served)

    def close(self) -> None:
        """Close every backend behind it, once each."""
        for backend in {id(b): b for b, _ in self.routes.values()}.values():
            backend.close()

    def _route(self, model: str | None) -> tuple[ChatBackend, str]:
        name = self.names[-1] if model is None else model
        if name not in self.routes:
            raise UserError(f"model '{name}' is not served here; choose one of: {', '.join(self.names)}")
        return self.routes[name]
