"""`tuneforge chat`: multi-turn REPL keeps history, /clear forgets it, thinking is shown apart."""

from __future__ import annotations

import io

import pytest
from conftest import make_tiny_qwen3, needs_assets
from rich.console import Console
from tiny_adapter import make_tiny_adapter

from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.chat import open_session, print_compare, print_streamed, repl


@needs_assets
def test_repl_keeps_history_and_clear_resets_it(tiny_qwen3_dir):
    session = open_session(
        str(tiny_qwen3_dir), None, None, SamplingParams(max_new_tokens=3, temperature=0), think=False, system="be brief"
    )
    seen: list[list[str]] = []
    chat = session.engine.chat

    def recording_chat(messages, *args, **kwargs):
        seen.append([f"{m.role}:{m.content}" for m in messages])
        return chat(messages, *args, **kwargs)

    session.engine.chat = recording_chat
    inputs = iter(["first", "second", "/clear", "third", "/exit"])
    out = io.StringIO()
    repl(session, Console(file=out, width=120), read=lambda _: next(inputs))

    assert [m[0] for m in seen] == ["system:be brief"] * 3
    assert [m[1:] for m in seen][0] == ["user:first"]
    assert seen[1][1] == "user:first" and seen[1][2].startswith("assistant:") and seen[1][3] == "user:second"
    assert seen[2][1:] == ["user:third"]
    assert out.getvalue().count("answer:") == 3


@needs_assets
def test_streamed_answer_shows_reasoning_apart(tiny_qwen3_dir):
    session = open_session(str(tiny_qwen3_dir), None, None, SamplingParams(max_new_tokens=32, temperature=0))
    tokenizer = session.engine.tokenizer
    scripted = tokenizer.encode("<think>\nplan it\n</think>\n\ndone", add_special_tokens=False)
    session.engine.source = lambda prompt_ids, params, name: iter([*scripted, tokenizer.eos_token_id])
    out = io.StringIO()
    result = print_streamed(session, [], "hi", Console(file=out, width=120))
    assert (result.reasoning, result.content) == ("plan it", "done")
    assert "thinking: plan it" in out.getvalue() and "answer: done" in out.getvalue()


@needs_assets
def test_compare_runs_base_and_tuned_in_one_batch_and_shows_both(tiny_qwen3_dir, tmp_path):
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    adapter = make_tiny_adapter(tiny_qwen3_dir, tmp_path / "adapter")
    session = open_session(str(tiny_qwen3_dir), str(adapter), None, greedy, think=False)
    alone = [session.ask([], "hi", model=name) for name in (session.base, session.tuned)]
    events: list[tuple[str, str]] = []
    source = session.engine.source

    def recording(prompt_ids, params, name):
        events.append(("start", name))  # when the generation is handed to the engine, before any token is read
        tokens = source(prompt_ids, params, name)
        return (events.append(("token", name)) or token for token in tokens)

    session.engine.source = recording
    out = io.StringIO()
    results = print_compare(session, [], "hi", Console(file=out, width=200))
    assert results == alone and alone[0].content != alone[1].content
    assert events[:2] == [("start", session.base), ("start", session.tuned)]  # both in the batch before a token
    assert session.base in out.getvalue() and session.tuned in out.getvalue()

    tokenizer = session.engine.tokenizer
    texts = {session.base: "<think>\nplan it\n</think>\n\nbase says [hi]", session.tuned: "tuned says hello"}
    session.engine.source = lambda prompt_ids, params, name: iter(
        [*tokenizer.encode(texts[name], add_special_tokens=False), tokenizer.eos_token_id]
    )
    session.params = SamplingParams(max_new_tokens=40)
    out = io.StringIO()
    scripted = print_compare(session, [], "hi", Console(file=out, width=200))
    assert [(r.reasoning, r.content) for r in scripted] == [("plan it", "base says [hi]"), (None, "tuned says hello")]
    shown = out.getvalue()
    assert "plan it" in shown and "base says [hi]" in shown and "tuned says hello" in shown  # [hi] is not markup


@needs_assets
def test_default_answer_length_is_clamped_to_the_context_left_but_an_explicit_one_is_not(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.errors import UserError

    small = str(make_tiny_qwen3(tmp_path / "ctx64", max_position_embeddings=64))  # less than the default 512
    session = open_session(small, None, None, SamplingParams(temperature=0), think=False)
    result = session.ask([], "hi")
    assert (result.finish_reason, result.prompt_tokens + result.completion_tokens) == ("length", 64)

    session.params = SamplingParams(max_new_tokens=600, temperature=0)
    with pytest.raises(UserError, match="600 new tokens were asked for, but the context is 64 tokens"):
        session.ask([], "hi")

    ok = CliRunner().invoke(app, ["chat", "--model", small, "--prompt", "hi", "--greedy", "--no-think"])
    assert ok.exit_code == 0, ok.output
    refused = CliRunner().invoke(app, ["chat", "--model", small, "--prompt", "hi", "--max-new-tokens", "600"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "600 new tokens were asked for, but the context is 64 tokens" in refused.output
