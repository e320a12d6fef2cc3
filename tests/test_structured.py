"""Structured output (infer/structured.py): response_format through xgrammar in the local engine and `tuneforge serve`.

On a tiny random Qwen3 with the real tokenizer: its text is garbage, but inside JSON that parses and validates
against the requested schema, for several schemas and seeds; an unconstrained row's answer does not change when a
constrained one shares its batch; thinking stays free and only the answer after `</think>` is constrained.
"""

from __future__ import annotations

import json
import sys

import jsonschema
import pytest

from tuneforge.data.conversation import Message
from tuneforge.errors import UserError
from tuneforge.infer.backend import ResponseFormat, SamplingParams
from tuneforge.infer.structured import Grammars, openai_response_format, parse_response_format

pytest.importorskip("xgrammar", reason="the structured extra (xgrammar) is not installed")

QWEN3_VOCAB, IM_END = 151936, 151645
QUESTIONS = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1}},
    "required": ["questions"],
}
JUDGEMENT = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "supported": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 30},
    },
    "required": ["score", "supported", "reason"],
}
NESTED = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["manual", "regulation"]},
        "pages": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "meta": {"type": "object", "properties": {"lang": {"enum": ["en", "zh"]}}, "required": ["lang"]},
    },
    "required": ["kind", "pages", "meta"],
}
ASK = [Message("user", "Write questions about the filter rules.")]


def fmt(schema: dict) -> ResponseFormat:
    return ResponseFormat(json.dumps(schema))


def allows(bitmask, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


@pytest.fixture(scope="module")
def engine(tiny_qwen3_dir):
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec

    return load_engine(resolve_spec(model=str(tiny_qwen3_dir)))


def test_response_format_objects_map_to_the_engine_and_back():
    body = {"type": "json_schema", "json_schema": {"name": "judgement", "schema": JUDGEMENT}}
    parsed = parse_response_format(body)
    assert parsed == ResponseFormat(json.dumps(JUDGEMENT), "judgement")
    assert openai_response_format(parsed) == body
    assert parse_response_format({"type": "json_object"}) == ResponseFormat()
    assert openai_response_format(ResponseFormat()) == {"type": "json_object"}
    assert parse_response_format({"type": "text"}) is None and parse_response_format(None) is None
    with pytest.raises(UserError, match=r"^response_format.type: 'yaml' is not one of text, json_object, json_schema$"):
        parse_response_format({"type": "yaml"})
    with pytest.raises(UserError, match=r"^response_format.json_schema.schema: a JSON schema object is required$"):
        parse_response_format({"type": "json_schema", "json_schema": {"name": "x"}})


def test_a_schema_xgrammar_cannot_take_is_one_line_naming_the_problem(qwen3_tokenizer):
    grammars = Grammars(qwen3_tokenizer, QWEN3_VOCAB, {IM_END})
    with pytest.raises(UserError) as info:
        grammars.compile(ResponseFormat('{"type": "nonsense"}'))
    assert str(info.value) == 'response_format: the JSON schema was refused: Unsupported type "nonsense"'
    with pytest.raises(UserError, match=r"^response_format: the JSON schema was refused: Cannot find field"):
        grammars.compile(ResponseFormat('{"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}}'))


def test_bounded_strings_refuse_raw_control_characters(qwen3_tokenizer):
    """xgrammar#800 work-around: a maxLength string takes no raw TAB (json.loads would refuse it)."""
    import xgrammar

    compiled = Grammars(qwen3_tokenizer, QWEN3_VOCAB, {IM_END}).compile(fmt(QUESTIONS))
    assert xgrammar.GrammarMatcher(compiled).accept_string('{"questions": ["a b"]}')
    assert not xgrammar.GrammarMatcher(compiled).accept_string('{"questions": ["a\tb"]}')


def test_thinking_is_free_and_only_the_answer_after_it_is_constrained(qwen3_tokenizer):
    import xgrammar

    grammars = Grammars(qwen3_tokenizer, QWEN3_VOCAB, {IM_END})
    think, unthink = qwen3_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    brace, word = qwen3_tokenizer.convert_tokens_to_ids(["{", "Hello"])
    render = qwen3_tokenizer.apply_chat_template
    thinking = render([m.to_template() for m in ASK], add_generation_prompt=True, tokenize=False)
    closed = render([m.to_template() for m in ASK], add_generation_prompt=True, tokenize=False, enable_thinking=False)
    bitmask = xgrammar.allocate_token_bitmask(1, QWEN3_VOCAB)

    # Thinking on: the first token may open the think block or start the JSON, nothing else.
    row = grammars.constraint(fmt(QUESTIONS), thinking)
    assert row.fill(bitmask, 0)
    assert allows(bitmask, 0, think) and allows(bitmask, 0, brace)
    assert not allows(bitmask, 0, word) and not allows(bitmask, 0, IM_END)
    for token in (think, word, IM_END - 1):  # inside the think block anything goes: nothing is masked
        row.accept(token)
        assert row.phase == "thinking" and not row.fill(bitmask, 0)
    row.accept(unthink)
    xgrammar.reset_token_bitmask(bitmask)
    assert row.phase == "answer" and row.fill(bitmask, 0)
    assert allows(bitmask, 0, brace) and not allows(bitmask, 0, think) and not allows(bitmask, 0, word)

    # A model that answers at once is constrained from its first token on.
    row = grammars.constraint(fmt(QUESTIONS), thinking)
    row.accept(brace)
    xgrammar.reset_token_bitmask(bitmask)
    assert row.phase == "answer" and row.fill(bitmask, 0) and not allows(bitmask, 0, think)

    # enable_thinking=False closed the block in the prompt, and a raw completion has none: constrained at once.
    for prompt in (closed, None):
        row = grammars.constraint(fmt(QUESTIONS), prompt)
        xgrammar.reset_token_bitmask(bitmask)
        assert row.phase == "answer" and row.fill(bitmask, 0) and not allows(bitmask, 0, think)
    # A template that opens <think> in the prompt (QwQ, R1) starts inside the free reasoning.
    assert grammars.constraint(fmt(QUESTIONS), thinking + "<think>\n").phase == "thinking"


def test_engine_answers_validate_against_their_schema_for_several_schemas_and_seeds(engine):
    """Nine constrained rows in one batch (three schemas, greedy and two seeds): every answer parses and validates."""
    cases = [(schema, seed) for schema in (QUESTIONS, JUDGEMENT, NESTED) for seed in (None, 1, 2)]
    generations = [
        engine.chat(
            ASK,
            SamplingParams(
                max_new_tokens=160, temperature=0 if seed is None else 1.0, seed=seed, response_format=fmt(schema)
            ),
            enable_thinking=False,
        )
        for schema, seed in cases
    ]
    for generation in generations:
        generation.start()
    results = [generation.result() for generation in generations]
    for (schema, _), result in zip(cases, results):
        assert result.finish_reason == "stop", result
        jsonschema.validate(json.loads(result.content), schema)
    # Greedy and each seed drew their own free-text questions.
    assert len({r.content for (schema, _), r in zip(cases, results) if schema is QUESTIONS}) == 3


def test_json_object_takes_any_object_and_nothing_else(qwen3_tokenizer):
    import xgrammar

    compiled = Grammars(qwen3_tokenizer, QWEN3_VOCAB, {IM_END}).compile(ResponseFormat())
    for text, ok in [('{"a": [1, {"b": null}]}', True), ("{}", True), ("[1]", False), ('"a"', False)]:
        assert xgrammar.GrammarMatcher(compiled).accept_string(text) is ok, text


def test_an_unconstrained_answer_is_the_same_with_or_without_a_constrained_neighbour(engine):
    free = SamplingParams(max_new_tokens=24, temperature=0)
    alone = engine.chat(ASK, free, enable_thinking=False).result()
    for order in (0, 1):
        pair = [
            engine.chat(ASK, free, enable_thinking=False),
            engine.chat(
                ASK,
                SamplingParams(max_new_tokens=24, temperature=0, response_format=fmt(QUESTIONS)),
                enable_thinking=False,
            ),
        ][:: 1 if order == 0 else -1]
        for generation in pair:
            generation.start()
        results = [generation.result() for generation in pair]
        beside, constrained = results if order == 0 else results[::-1]
        assert beside == alone
        assert constrained.content.startswith('{"questions": ["') and constrained.content != alone.content


def test_engines_that_cannot_constrain_refuse_in_one_line(qwen3_tokenizer, monkeypatch):
    from tuneforge.infer.engine import Engine

    scripted = Engine(qwen3_tokenizer, {"m": None}, lambda *a: iter([IM_END]), max_model_len=4096)
    with pytest.raises(UserError, match=r"^response_format: this engine cannot constrain its output"):
        scripted.chat(ASK, SamplingParams(response_format=ResponseFormat()))
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # as if the structured extra were not installed
    with pytest.raises(UserError, match=r"pip install 'tuneforge\[structured\]'$"):
        Grammars(qwen3_tokenizer, QWEN3_VOCAB, {IM_END}).compile(ResponseFormat())


def test_serve_answers_json_schema_through_the_openai_client_and_refuses_bad_schemas_with_400(
    engine, tiny_qwen3_dir, monkeypatch
):
    import openai

    from tuneforge.serve.app import create_app, serve_in_background

    name = str(tiny_qwen3_dir)
    no_think = {"chat_template_kwargs": {"enable_thinking": False}}
    with serve_in_background(create_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0)

        def ask(response_format: dict, **extra):
            return client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "Rate the answer."}],
                response_format=response_format,
                max_tokens=160,
                extra_body=no_think,
                **extra,
            )

        for seed in (3, 4):
            reply = ask({"type": "json_schema", "json_schema": {"name": "j", "schema": JUDGEMENT}}, seed=seed)
            assert reply.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(reply.choices[0].message.content), JUDGEMENT)
        streamed = ask(
            {"type": "json_schema", "json_schema": {"name": "j", "schema": JUDGEMENT}}, temperature=0, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        jsonschema.validate(json.loads(text), JUDGEMENT)

        bad = [
            (
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                'response_format: the JSON schema was refused: Unsupported type "nonsense"',
            ),
            ({"type": "xml"}, "response_format.type: 'xml' is not one of text, json_object, json_schema"),
        ]
        for response_format, message in bad:
            with pytest.raises(openai.BadRequestError) as info:
                ask(response_format)
            assert info.value.status_code == 400 and info.value.body["message"] == message
        monkeypatch.setitem(sys.modules, "xgrammar", None)  # the structured extra absent: 400, not 500
        with pytest.raises(openai.BadRequestError, match=r"pip install 'tuneforge\[structured\]'"):
            ask({"type": "json_object"})
        monkeypatch.undo()
        # The server is still up and answers the next request.
        reply = ask({"type": "json_schema", "json_schema": {"name": "n", "schema": NESTED}}, temperature=0)
        jsonschema.validate(json.loads(reply.choices[0].message.content), NESTED)
