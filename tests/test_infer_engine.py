"""The inference engine: output parsing, incremental decoding, stop rules, and generation on a tiny Qwen3."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ASSETS, needs_assets
from tiny_adapter import make_tiny_adapter

from tuneforge.data.conversation import Message, ToolCall, split_think
from tuneforge.errors import UserError
from tuneforge.infer.backend import SamplingParams
from tuneforge.infer.engine import Engine, IncrementalDecoder, load_engine
from tuneforge.infer.parse import OutputParser, StopMatcher
from tuneforge.infer.spec import parse_adapters, resolve_spec

TOOL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THOUGHT = "<think>\nThe user wants the weather.\n\nI should call the tool.\n</think>\n\n"


def parse(text: str, step: int, **options) -> tuple[str, str, list[ToolCall]]:
    """Feed `text` in pieces of `step` characters; return (reasoning, content, tool calls)."""
    parser = OutputParser(**options)
    deltas = [parser.feed(text[i : i + step]) for i in range(0, len(text), step)] + [parser.finish()]
    return (
        "".join(d.reasoning for d in deltas),
        "".join(d.content for d in deltas),
        [c for d in deltas for c in d.tool_calls],
    )


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(
    "text",
    [
        "<think>\nLet me think.\n\nStill thinking.\n</think>\n\nThe answer is 4.",
        "<think>\n\n</think>\n\nNo reasoning here.",
        "\n<think>\nleading newline\n</think>\n\n\nAnswer kept from its first non-newline.",
    ],
)
def test_reasoning_split_matches_split_think_in_any_chunking(text: str, step: int) -> None:
    reasoning, content, calls = parse(text, step)
    assert (reasoning, content) == split_think(text)
    assert calls == []


@pytest.mark.parametrize("step", [1, 1000])
def test_text_without_think_block_is_all_answer(step: int) -> None:
    assert parse("  Hello <thi", step) == ("", "  Hello <thi", [])
    assert parse("<thin", step) == ("", "<thin", [])


def test_prompt_opened_think_starts_in_reasoning_and_truncated_reasoning_stays_reasoning() -> None:
    assert parse("Reasoning only\n</think>\n\nAnswer", 1, reasoning_open=True) == ("Reasoning only", "Answer", [])
    assert parse("<think>\nunfinished thought\n", 1) == ("unfinished thought", "", [])


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_tool_calls_are_parsed_and_surrounding_separators_dropped(step: int) -> None:
    text = f"{THOUGHT}Let me check.\n{TOOL_TEXT}\n" + '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    reasoning, content, calls = parse(text, step, tools=True)
    assert reasoning == "The user wants the weather.\n\nI should call the tool."
    assert content == "Let me check."
    assert calls == [ToolCall("get_weather", {"city": "Paris"}), ToolCall("now", {})]


def test_tool_blocks_stay_text_when_tools_are_off_or_the_json_is_bad() -> None:
    assert parse(TOOL_TEXT, 1) == ("", TOOL_TEXT, [])
    bad = "<tool_call>\n{not json}\n</tool_call> tail"
    assert parse(bad, 1, tools=True) == ("", bad, [])
    assert parse('<tool_call>\n{"name": "f", "arguments": {}}', 1, tools=True) == ("", "", [ToolCall("f", {})])


def test_raw_mode_passes_everything_through() -> None:
    text = f"{THOUGHT}{TOOL_TEXT}"
    assert parse(text, 2, think=False) == ("", text, [])


def test_stop_matcher_holds_back_possible_stops_and_cuts_at_the_first() -> None:
    stops = StopMatcher(["END", "###"])
    assert stops.feed("abc E") == ("abc ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("xy #") == ("ENxy ", False)
    assert stops.feed("##tail") == ("", True)
    assert StopMatcher([]).feed("E") == ("E", False)


@needs_assets
def test_incremental_decoder_never_splits_a_character(qwen3_tokenizer) -> None:
    text = "你好，世界！🙂 naïve <think>x</think> done"
    ids = qwen3_tokenizer.encode(text)
    decoder = IncrementalDecoder(qwen3_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


# --- the engine over a scripted token source (exact outputs) ---------------------------------------------


class Script:
    """A TokenSource that yields the tokens of a fixed text, then eos; records that it was closed."""

    def __init__(self, tokenizer, text: str, eos: bool = True) -> None:
        self.ids = tokenizer.encode(text) + ([tokenizer.eos_token_id] if eos else [])
        self.prompts: list[list[int]] = []
        self.closed = threading.Event()

    def __call__(self, prompt_ids: list[int], params: SamplingParams, model: str) -> Iterator[int]:
        self.prompts.append(prompt_ids)
        try:
            yield from self.ids
            while True:  # a real model never stops by itself
                yield self.ids[0]
        finally:
            self.closed.set()


def scripted(tokenizer, text: str, **kwargs) -> tuple[Engine, Script]:
    script = Script(tokenizer, text, **kwargs)
    return Engine(tokenizer, {"m": None}, script, max_model_len=4096), script


@needs_assets
def test_chat_streams_reasoning_then_answer_with_exact_counts(qwen3_tokenizer) -> None:
    engine, script = scripted(qwen3_tokenizer, THOUGHT + "It is sunny.")
    messages = [Message("system", "Be brief."), Message("user", "Weather?")]
    generation = engine.chat(messages, SamplingParams(max_new_tokens=100))
    deltas = list(generation)
    assert (deltas[0].reasoning, deltas[0].content) == ("The", "")  # streamed as made, tags and newline dropped
    result = generation.result()
    assert result.reasoning == "The user wants the weather.\n\nI should call the tool."
    assert result.content == "It is sunny."
    assert result.finish_reason == "stop"
    expected_prompt = qwen3_tokenizer.apply_chat_template(
        [m.to_template() for m in messages], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    assert script.prompts == [expected_prompt]
    assert (result.prompt_tokens, result.completion_tokens) == (len(expected_prompt), len(script.ids))
    assert script.closed.is_set()


@needs_assets
def test_tool_call_result_renders_back_token_exact(qwen3_tokenizer) -> None:
    output = THOUGHT + "Let me check.\n" + TOOL_TEXT
    engine, _ = scripted(qwen3_tokenizer, output)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    question = [Message("user", "Weather in Paris?")]
    generation = engine.chat(question, SamplingParams(max_new_tokens=100), tools=tools)
    result = generation.result()
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == [ToolCall("get_weather", {"city": "Paris"})]
    assert result.content == "Let me check."
    prompt = engine.render(question, tools=tools)
    history = [m.to_template() for m in [*question, result.to_message()]]
    rendered = qwen3_tokenizer.apply_chat_template(history, tools=tools, tokenize=False)
    assert rendered == prompt + output + "<|im_end|>\n"


@needs_assets
def test_enable_thinking_false_puts_the_empty_think_block_in_the_prompt(qwen3_tokenizer) -> None:
    engine, _ = scripted(qwen3_tokenizer, "Plain.")
    on = engine.render([Message("user", "hi")])
    off = engine.render([Message("user", "hi")], enable_thinking=False)
    assert off == on + "<think>\n\n</think>\n\n"
    result = engine.chat([Message("user", "hi")], enable_thinking=False).result()
    assert (result.reasoning, result.content) == (None, "Plain.")


@needs_assets
def test_template_that_opens_think_in_the_prompt(qwen3_tokenizer) -> None:
    tokenizer = copy.deepcopy(qwen3_tokenizer)
    tokenizer.chat_template = (ASSETS / "chat-templates" / "Qwen-QwQ-32B.jinja").read_text()
    engine, _ = scripted(tokenizer, "Hmm, two plus two.\n</think>\n\nFour.")
    result = engine.chat([Message("user", "2+2?")]).result()
    assert (result.reasoning, result.content) == ("Hmm, two plus two.", "Four.")


@needs_assets
def test_stop_strings_max_tokens_and_cancel_end_the_source(qwen3_tokenizer) -> None:
    engine, script = scripted(qwen3_tokenizer, "one two three STOP four", eos=False)
    stopped = engine.chat([Message("user", "count")], SamplingParams(max_new_tokens=50, stop=("STOP",))).result()
    assert (stopped.content, stopped.finish_reason) == ("one two three ", "stop")
    assert script.closed.is_set()

    engine, script = scripted(qwen3_tokenizer, "one two three", eos=False)
    capped = engine.chat([Message("user", "count")], SamplingParams(max_new_tokens=2)).result()
    assert (capped.content, capped.finish_reason, capped.completion_tokens) == ("one two", "length", 2)

    engine, script = scripted(qwen3_tokenizer, "one two three four five", eos=False)
    generation = engine.chat([Message("user", "count")], SamplingParams(max_new_tokens=50))
    for delta in generation:
        assert delta.content == "one"
        generation.cancel()
    assert generation.result().finish_reason == "abort"
    assert script.closed.is_set()


@needs_assets
def test_requests_the_engine_cannot_serve_are_user_errors(qwen3_tokenizer) -> None:
    engine, _ = scripted(qwen3_tokenizer, "x")
    with pytest.raises(UserError, match="model 'other' is not served here; choose one of: m"):
        engine.chat([Message("user", "hi")], model="other")
    with pytest.raises(UserError, match="the context is 4096 tokens"):
        engine.chat([Message("user", "hi")], SamplingParams(max_new_tokens=4090))
    with pytest.raises(UserError, match="the context is 4096 tokens"):
        engine.complete("word " * 5000)


# --- real weights: a tiny random Qwen3 and a LoRA adapter ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_adapter(tiny_qwen3_dir, tmp_path_factory) -> tuple[Path, Path]:
    return tiny_qwen3_dir, make_tiny_adapter(tiny_qwen3_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_with_adapter) -> Engine:
    base, adapter = tiny_with_adapter
    return load_engine(resolve_spec(model=str(base), adapters={"tuned": adapter}))


def test_greedy_generation_matches_transformers_generate_for_base_and_adapter(tiny_engine, tiny_with_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir = tiny_with_adapter
    messages = [Message("user", "Who are you?")]
    inputs = tiny_engine.tokenizer.apply_chat_template(
        [m.to_template() for m in messages], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    answers = {}
    for name, reference in [
        (str(base_dir), AutoModelForCausalLM.from_pretrained(base_dir)),
        ("tuned", PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)),
    ]:
        with torch.no_grad():
            out = reference.generate(**inputs, max_new_tokens=12, do_sample=False)
        expected = tiny_engine.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers[name] = tiny_engine.chat(messages, greedy, model=name).result().content
        assert answers[name] == expected
    assert answers[str(base_dir)] != answers["tuned"]
    assert tiny_engine.names == [str(base_dir), "tuned"]
    assert tiny_engine.models == {str(base_dir): None, "tuned": str(base_dir)}


def test_interleaved_generations_keep_their_own_adapter(tiny_engine):
    messages = [Message("user", "Hello")]
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    alone = {name: tiny_engine.chat(messages, greedy, model=name).result().content for name in tiny_engine.names}
    streams = {name: iter(tiny_engine.chat(messages, greedy, model=name)) for name in tiny_engine.names}
    pieces = dict.fromkeys(tiny_engine.names, "")
    for _ in range(12):  # alternate between the two generations, one delta at a time
        for name, stream in streams.items():
            delta = next(stream, None)
            pieces[name] += delta.content if delta else ""
    assert pieces == alone


def test_seeded_sampling_is_reproducible(tiny_engine):
    messages = [Message("user", "Tell me something.")]
    sample = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    first = tiny_engine.chat(messages, sample).result().content
    assert tiny_engine.chat(messages, sample).result().content == first
    other = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95, seed=8)
    assert tiny_engine.chat(messages, other).result().content != first


def test_cpu_engine_head_gives_each_row_its_logits_in_any_batch_and_keeps_the_gil_switch_short(tiny_engine):
    import copy
    import sys

    import torch

    from tuneforge.infer.batcher import SWITCH_INTERVAL_S

    model = tiny_engine.source.__self__.targets["tuned"][0].get_base_model()
    head = model.get_output_embeddings()
    assert head.weight.shape == (151936, 64) and head.weight.is_contiguous()  # the weight is untouched
    assert model.get_input_embeddings().weight is head.weight  # still tied: one copy
    hidden = torch.randn(8, 1, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torch.nn.functional.linear(hidden, head.weight)
        batch = head(hidden)  # several rows: oneDNN on the packed weight (tuneforge.infer.cpu_head)
        assert batch.shape == (8, 1, 151936) and batch.is_contiguous()
        torch.testing.assert_close(batch, expected, rtol=0, atol=1e-5)  # another order of the same sums
        assert batch.argmax(-1).tolist() == expected.argmax(-1).tolist()
        # A row's logits do not depend on the rows beside it (bit for bit on the machines measured; oneDNN may block
        # another CPU's product differently, so the test allows rounding).
        for rows in (2, 3, 5):
            torch.testing.assert_close(head(hidden[:rows]), batch[:rows], rtol=0, atol=1e-6)
        assert torch.equal(head(hidden[:1]), torch.nn.functional.linear(hidden[:1], head.weight))  # one row: BLAS
    twin = copy.deepcopy(head)  # what peft's modules_to_save makes of the head: it computes with its own weight
    with torch.inference_mode():
        before = twin(hidden)
    with torch.no_grad():
        twin.weight.mul_(2)  # in place, after a product (as loading an adapter's head does): it is packed again
    with torch.inference_mode():
        torch.testing.assert_close(twin(hidden), 2 * before, rtol=0, atol=2e-5)
        assert torch.equal(head(hidden), batch)
    assert sys.getswitchinterval() <= SWITCH_INTERVAL_S


def test_sampled_and_greedy_rows_in_one_batch_draw_what_they_draw_alone(tiny_engine):
    # Rows are picked together (one argmax for the greedy ones, one warp per shared setting), each seeded row
    # with its own generator: in a batch every seeded or greedy row gets exactly the tokens it gets alone.
    messages = [Message("user", q) for q in ("Tell me something.", "Count to five.", "Hi")]
    asks = [
        (messages[0], SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=7)),
        (messages[1], SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=9)),
        (messages[0], SamplingParams(max_new_tokens=8, temperature=0.7, top_k=20, seed=7)),
        (messages[2], SamplingParams(max_new_tokens=8, temperature=0)),
        (messages[1], SamplingParams(max_new_tokens=8, temperature=1.0)),  # unseeded: it only has to run
    ]
    alone = [tiny_engine.chat([m], p, model="tuned").result() for m, p in asks]
    generations = [tiny_engine.chat([m], p, model="tuned") for m, p in asks]
    for generation in generations:
        generation.start()
    batched = [g.result() for g in generations]
    assert batched[:4] == alone[:4]
    assert batched[0].content != batched[2].content  # same seed and prompt, another setting: other tokens
    assert batched[4].completion_tokens == 8


# --- what to load ----------------------------------------------------------------------------------------


def test_spec_for_a_lora_run_serves_base_and_run_adapter(tmp_path, tiny_with_adapter):
    from tuneforge.config import save_config, validate

    base, adapter = tiny_with_adapter
    run = tmp_path / "mybot"
    config = validate(
        {"model": {"name_or_path": str(base)}, "data": {"datasets": [{"path": "d.json"}]}, "output": {"dir": str(run)}}
    )
    save_config(config, run / "config.yaml")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    spec = resolve_spec(run=run, adapters=parse_adapters([f"other={adapter}"]))
    assert spec.names == [str(base), "mybot", "other"]
    assert spec.model.name_or_path == str(base)
    assert spec.tokenizer.name_or_path == str(base)  # no tokenizer saved beside the adapter
    assert spec.adapters == {"mybot": run / "adapter", "other": adapter}


def test_spec_errors_name_the_flag(tmp_path, tiny_with_adapter):
    _, adapter = tiny_with_adapter
    with pytest.raises(UserError, match=r"--adapter 'x': expected NAME=DIR"):
        parse_adapters(["x"])
    with pytest.raises(UserError, match=r"--adapter a=.*is not a peft adapter folder"):
        resolve_spec(model="m", adapters=parse_adapters([f"a={tmp_path}"]))
    with pytest.raises(UserError, match="the name 'a' is given twice"):
        parse_adapters([f"a={adapter}", f"a={adapter}"])
    with pytest.raises(UserError, match="give the model to load"):
        resolve_spec()
    with pytest.raises(UserError, match="served name 'm' is used twice"):
        resolve_spec(model="m", adapters={"m": adapter})
    with pytest.raises(UserError, match="not a tuneforge run folder"):
        resolve_spec(run=tmp_path)


# --- batched generation and scoring --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_adapters(tiny_with_adapter, tmp_path_factory) -> Engine:
    """The tiny Qwen3 with two different LoRA adapters, 'tuned' and 'other'."""
    base, adapter = tiny_with_adapter
    other = make_tiny_adapter(base, tmp_path_factory.mktemp("other"), seed=1)
    return load_engine(resolve_spec(model=str(base), adapters={"tuned": adapter, "other": other}))


def recorded(engine: Engine, monkeypatch) -> dict[tuple[str, tuple[int, ...]], list[int]]:
    """Wrap the engine's token source (for this test) to record the tokens each (model, prompt) received."""
    tokens: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    source = engine.source

    def record(prompt_ids: list[int], params: SamplingParams, model: str) -> Iterator[int]:
        got = tokens.setdefault((model, tuple(prompt_ids)), [])
        for token in source(prompt_ids, params, model):
            got.append(token)
            yield token

    monkeypatch.setattr(engine, "source", record)
    return tokens


QUESTIONS = [
    "Hi",
    "Tell me a very long story about a dragon who learned to count to one hundred in three languages.",
    "What is 2+2?",
    "Who are you?",
    "Describe the weather in Paris and in Beijing today, in detail, for a travel guide.",
    "ok",
]


def test_batched_greedy_equals_one_by_one_token_for_token(two_adapters, monkeypatch):
    engine = two_adapters
    base = engine.names[0]
    conversations = [[Message("user", q)] for q in QUESTIONS]
    models = [base, "tuned", "other", "tuned", base, "other"]  # two adapters and the base in one batch
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    tokens = recorded(engine, monkeypatch)
    alone = [engine.chat(c, greedy, model=m).result() for c, m in zip(conversations, models)]
    one_by_one = dict(tokens)
    tokens.clear()
    batched = engine.generate_batch(conversations, greedy, model=models, max_batch_size=6)
    assert tokens == one_by_one  # every request got exactly the same tokens
    assert batched == alone
    assert len({r.content for r in alone}) == len(alone)
    assert {r.completion_tokens for r in batched} == {10}

    # A stop string cuts one member's output where it cuts it alone; the others run on.
    stop = alone[1].content[3:7]
    stopped = SamplingParams(max_new_tokens=10, temperature=0, stop=(stop,))
    expected = [engine.chat(c, stopped, model=m).result() for c, m in zip(conversations, models)]
    assert expected[1].finish_reason == "stop"
    assert expected[1].content == alone[1].content[: alone[1].content.find(stop)]
    assert (
        engine.generate_batch(conversations, stopped, model=models, max_batch_size=4, max_batch_tokens=200) == expected
    )


def settles(value: Callable[[], object], expected: object, seconds: float = 10.0) -> bool:
    """Whether value() becomes `expected` within `seconds` (the batcher updates its rows in its own thread)."""
    deadline = time.monotonic() + seconds
    while value() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return value() == expected


def test_a_cancelled_member_leaves_the_batch_and_the_others_are_unchanged(two_adapters):
    engine = two_adapters
    batcher = engine.source.__self__
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    conversations = [[Message("user", q)] for q in QUESTIONS[:3]]
    alone = [engine.chat(c, greedy, model="tuned").result() for c in conversations]
    generations = [engine.chat(c, greedy, model="tuned") for c in conversations]
    for generation in generations:
        generation.start()
    streams = [iter(g) for g in generations]
    next(streams[0]), next(streams[1]), next(streams[2])
    assert batcher.running == 3
    generations[1].cancel()
    assert list(streams[1]) == []  # it stops before its next token...
    assert settles(lambda: batcher.running, 2)  # ...and leaves the batch at the next step
    for stream in streams[0], streams[2]:
        list(stream)
    results = [g.result() for g in generations]
    assert results[1].finish_reason == "abort"
    assert (results[0], results[2]) == (alone[0], alone[2])
    assert settles(lambda: batcher.running, 0)


def test_batches_group_similar_lengths_keep_the_token_budget_and_halve_on_out_of_memory():
    import torch

    from tuneforge.infer.batcher import batched

    seen: list[list[int]] = []

    def run(batch: list[int]) -> list[str]:
        seen.append(batch)
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [f"item {i}" for i in batch]

    sizes = [5, 1, 9, 3, 7]
    assert batched(sizes, run, max_batch_size=4, max_batch_tokens=None) == [f"item {i}" for i in range(5)]
    assert seen == [[2, 4, 0, 3], [2, 4], [0, 3], [1]]  # longest first; the first batch halved once
    seen.clear()
    assert batched(sizes, run, max_batch_size=4, max_batch_tokens=16) == [f"item {i}" for i in range(5)]
    assert seen == [[2], [4, 0], [3, 1]]  # 9 alone (9 x 2 > 16); 7 x 2 = 14; 3 x 2 = 6
    with pytest.raises(torch.cuda.OutOfMemoryError):
        batched([1], lambda batch: run(batch * 3), max_batch_size=1, max_batch_tokens=None)


def test_score_matches_a_full_forward_pass_per_pair_in_input_order(two_adapters, tiny_with_adapter):
    import torch
    from transformers import AutoModelForCausalLM

    engine = two_adapters
    base = engine.names[0]
    prompts = ["The capital of France is", "Hi", "Two plus two equals", "A"]
    continuations = [" Paris.", " there, how are you doing today?", " four", " long continuation of several words"]
    scores = engine.score(prompts, continuations, model=base, max_batch_size=3)
    reference = AutoModelForCausalLM.from_pretrained(tiny_with_adapter[0]).eval()
    for prompt, continuation, got in zip(prompts, continuations, scores):
        p = engine.tokenizer(prompt)["input_ids"]
        c = engine.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = reference(torch.tensor([p + c])).logits[0].float().log_softmax(-1)
        want = [float(logprobs[len(p) - 1 + j, token]) for j, token in enumerate(c)]
        assert got == pytest.approx(want, abs=1e-4)
    tuned = engine.score(prompts, continuations, model="tuned", max_batch_size=4)
    for p, c, got in zip(prompts, continuations, tuned):
        assert got == pytest.approx(engine.score([p], [c], model="tuned")[0], abs=1e-4)
    assert tuned[0] != pytest.approx(scores[0], abs=1e-3)  # the adapter changes the likelihoods


def test_next_token_logprobs_equal_scoring_each_candidate_in_one_forward_per_prompt(two_adapters):
    engine = two_adapters
    prompts = ["The capital of France is", "Hi", "Answer:", "Two plus two equals four, so the answer is"]
    letters = ["A", "B", " C", "D"]
    for model in engine.names[0], "tuned":
        got = engine.next_token_logprobs(prompts, letters, model=model, max_batch_size=3)
        want = engine.score([p for p in prompts for _ in letters], letters * len(prompts), model=model)
        assert len(got) == len(prompts) and all(len(row) == len(letters) for row in got)
        assert [x for row in got for x in row] == pytest.approx([s for (s,) in want], abs=1e-5)
    with pytest.raises(UserError, match="next-token candidate ' long word' is 2 tokens; each must be one token"):
        engine.next_token_logprobs(["Hi"], ["A", " long word"])
    with pytest.raises(UserError, match="next-token scoring: prompt 0 has 0 tokens"):
        engine.next_token_logprobs([""], ["A"])


@needs_assets
def test_score_halves_a_batch_on_out_of_memory_and_refuses_what_it_cannot_score(qwen3_tokenizer):
    import torch

    sizes: list[int] = []

    def scorer(pairs, model):
        sizes.append(len(pairs))
        if len(pairs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [[float(len(p))] * len(c) for p, c in pairs]

    engine = Engine(qwen3_tokenizer, {"m": None}, Script(qwen3_tokenizer, "x"), max_model_len=64, scorer=scorer)
    assert engine.score(["a b c", "a"], [" x", " y z"]) == [[3.0], [1.0, 1.0]]
    assert sizes == [2, 1, 1]
    with pytest.raises(UserError, match="score: pair 0 has 1 prompt and 0 continuation tokens"):
        engine.score(["a"], [""])
    with pytest.raises(UserError, match="no model weights to score with"):
        scripted(qwen3_tokenizer, "x")[0].score(["a"], ["b"])
