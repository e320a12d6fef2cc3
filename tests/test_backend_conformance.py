"""Every `ChatBackend` gives the same answers to the same scripted conversations (infer/backend.py).

Parametrized over the local engine, a router (the base behind `tuneforge serve`, the adapter local), the remote
client against `tuneforge serve` running in this process, and the engine sharded over two worker processes, all
over one tiny Qwen3 and its LoRA adapter: greedy answers are equal to the token (text, counts, finish reason);
log-probabilities equal within float tolerance where the backend `can_score`, refused in one line where not.
The offline vLLM engine (infer/offline_vllm.py) is not among them: vLLM is not installed here (it needs Linux and
an NVIDIA GPU); what it shares with the others is checked statically below (`test_every_backend_class_...`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import loaded_by
from tiny_adapter import make_tiny_adapter

from tuneforge.data.conversation import Message
from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatBackend, ChatResult, ResponseFormat, SamplingParams

KEY = "sk-conformance"
CONVERSATIONS = [
    [Message("user", "Who are you?")],
    [Message("system", "You answer in one word."), Message("user", "Name a colour.")],
    [Message("user", "你好吗？"), Message("assistant", "很好。"), Message("user", "再说一次。")],
]
GREEDY = SamplingParams(max_new_tokens=5, temperature=0)
LETTERS = ["A", "B", "C", "D"]
VERDICT = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "blue"]},
        "sure": {"type": "boolean"},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["colour", "sure", "stars"],
}


@pytest.fixture(scope="module")
def models(tiny_qwen3_dir, tmp_path_factory) -> dict:
    """The spec (the tiny base and its adapter 'tuned'), its local engine, and `tuneforge serve` over that engine."""
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.serve.app import create_app, serve_in_background

    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path_factory.mktemp("adapter"))
    spec = resolve_spec(model=str(tiny_qwen3_dir), adapters={"tuned": adapter})
    engine = load_engine(spec)
    with serve_in_background(create_app(engine, api_key=KEY)) as url:
        yield {"spec": spec, "engine": engine, "url": url, "base": str(tiny_qwen3_dir)}


def remote(models: dict) -> ChatBackend:
    from tuneforge.infer.remote import RemoteEngine

    return RemoteEngine(models["url"], [models["base"], "tuned"], KEY, concurrency=2)


# The sharded engine starts two worker processes that load torch and the model (~1 min on 2 shared CPU cores).
@pytest.fixture(scope="module", params=["engine", "router", "remote", pytest.param("sharded", marks=pytest.mark.slow)])
def backend(request, models) -> Iterator[tuple[ChatBackend, dict[str, str]]]:
    """A backend and the names it serves the base and the tuned model under."""
    from tuneforge.infer.remote import Router
    from tuneforge.infer.shard import start_sharded

    names = {"base": models["base"], "tuned": "tuned"}
    if request.param == "engine":
        backend = models["engine"]
    elif request.param == "router":
        backend = Router({"base": (remote(models), models["base"]), "tuned": (models["engine"], "tuned")}, "tuned")
        names = {"base": "base", "tuned": "tuned"}
    elif request.param == "remote":
        backend = remote(models)
    else:
        backend = start_sharded(models["spec"], nproc=2)
    try:
        yield backend, names
    finally:
        if request.param != "engine":  # the engine serves the other cases too
            backend.close()


def expected(models: dict) -> list[ChatResult]:
    """The local engine's greedy answers: every conversation by the base, then by the tuned model."""
    roles = [models["base"]] * len(CONVERSATIONS) + ["tuned"] * len(CONVERSATIONS)
    return models["engine"].generate_batch(CONVERSATIONS * 2, GREEDY, model=roles, enable_thinking=False)


def test_every_backend_answers_the_scripted_conversations_alike(backend, models):
    backend, names = backend
    assert isinstance(backend, ChatBackend)
    assert backend.names[-1] == names["tuned"]
    roles = [names["base"]] * len(CONVERSATIONS) + [names["tuned"]] * len(CONVERSATIONS)
    got = backend.generate_batch(CONVERSATIONS * 2, GREEDY, model=roles, enable_thinking=False)
    want = expected(models)
    assert got == want
    assert [r.completion_tokens for r in want] == [5] * 6 and {r.finish_reason for r in want} == {"length"}
    assert len({r.content for r in want}) > 3  # the adapter changes the answers: the names were routed
    # One name for all, and the default (the tuned model), give the same as naming it per item.
    assert backend.generate_batch(CONVERSATIONS, GREEDY, model=names["tuned"], enable_thinking=False) == want[3:]
    assert backend.generate_batch(CONVERSATIONS, GREEDY, enable_thinking=False) == want[3:]


def test_every_backend_answers_a_response_format_alike_and_valid(backend, models):
    """Constrained decoding reaches every backend (the remote client sends `response_format` to `tuneforge serve`)."""
    pytest.importorskip("xgrammar", reason="the structured extra (xgrammar) is not installed")
    import jsonschema

    backend, names = backend
    params = SamplingParams(max_new_tokens=40, temperature=0, response_format=ResponseFormat(json.dumps(VERDICT)))
    got = backend.generate_batch(
        CONVERSATIONS, params, model=[names["base"], names["tuned"], names["base"]], enable_thinking=False
    )
    want = models["engine"].generate_batch(
        CONVERSATIONS, params, model=[models["base"], "tuned", models["base"]], enable_thinking=False
    )
    assert got == want
    for result in want:
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.content), VERDICT)


def test_every_backend_scores_alike_or_refuses_in_one_line(backend, models):
    backend, names = backend
    engine = models["engine"]
    tokenizer = engine.tokenizer
    prompts = [engine.render(c, enable_thinking=False) for c in CONVERSATIONS]
    pairs = [(tokenizer(p)["input_ids"], tokenizer("Blue.", add_special_tokens=False)["input_ids"]) for p in prompts]
    if not backend.can_score:  # the remote client; the router, whose base is behind the server
        for call in (
            lambda: backend.score_ids(pairs, model=names["base"]),
            lambda: backend.next_token_logprobs(prompts, LETTERS, model=names["base"]),
        ):
            with pytest.raises(UserError, match=r"^http://127\.0\.0\.1:\d+: .*no log-probabilities of given tokens$"):
                call()
        return
    assert backend.render(CONVERSATIONS[0], enable_thinking=False) == prompts[0]
    for role in ("base", "tuned"):
        want = engine.score_ids(pairs, model="tuned" if role == "tuned" else models["base"])
        assert_close(backend.score_ids(pairs, model=names[role]), want, width=2)
    # The default model is the tuned one, on every backend.
    want = engine.next_token_logprobs(prompts, LETTERS, model="tuned")
    assert_close(backend.next_token_logprobs(prompts, LETTERS), want, width=len(LETTERS))


def assert_close(got: list[list[float]], want: list[list[float]], width: int) -> None:
    """Equal log-probabilities (to float rounding: rows are batched and padded differently), `width` per row."""
    assert [len(g) for g in got] == [len(w) for w in want] == [width] * len(CONVERSATIONS)
    assert [x for g in got for x in g] == pytest.approx([x for w in want for x in w], abs=1e-4)


def test_every_backend_class_offers_the_protocol_with_the_same_signatures():
    import inspect

    from tuneforge.infer.engine import Engine
    from tuneforge.infer.offline_vllm import VllmEngine
    from tuneforge.infer.remote import RemoteEngine, Router
    from tuneforge.infer.shard import ShardedEngine

    def parameters(cls: type, method: str) -> dict[str, tuple[object, object]]:
        signature = inspect.signature(getattr(cls, method))
        return {p.name: (p.kind, p.default) for p in signature.parameters.values()}

    methods = ["render", "generate_batch", "score_ids", "next_token_logprobs", "close"]
    for cls in (Engine, VllmEngine, RemoteEngine, Router, ShardedEngine):
        assert all(hasattr(cls, name) for name in ("names", "can_score", *methods)), cls
        for method in methods:
            protocol, got = parameters(ChatBackend, method), parameters(cls, method)
            assert {name: got.get(name) for name in protocol} == protocol, (cls.__name__, method)
            # Beyond the protocol only optional keywords (the local engine's batch limits); no **kwargs swallowed.
            extra = [(kind, default) for name, (kind, default) in got.items() if name not in protocol]
            optional = [k == inspect.Parameter.KEYWORD_ONLY and d is not inspect.Parameter.empty for k, d in extra]
            assert all(optional), (cls.__name__, method)
    # Generation-only backends say so before anything loads.
    assert VllmEngine.can_score is False and RemoteEngine.can_score is False


def test_a_router_scores_only_when_every_backend_behind_it_can(models):
    from tuneforge.infer.remote import Router

    local = Router({"base": (models["engine"], models["base"]), "tuned": (models["engine"], "tuned")}, "tuned")
    assert local.can_score
    mixed = Router({"base": (remote(models), models["base"]), "tuned": (models["engine"], "tuned")}, "tuned")
    assert not mixed.can_score
    with pytest.raises(UserError, match=r"^model 'other' is not served here; choose one of: base, tuned$"):
        local.score_ids([([1], [2])], model="other")
    mixed.close()


def test_the_backend_module_loads_nothing_heavy():
    imports = "tuneforge.infer.backend, tuneforge.infer.remote, tuneforge.infer.offline_vllm"
    assert loaded_by(imports, ("torch", "transformers", "openai", "vllm")) == []
