"""export ollama: the Modelfile's Go TEMPLATE renders exactly what the Hugging Face chat template renders."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ASSETS

from tuneforge.errors import UserError
from tuneforge.export.ollama import export_ollama

QWEN2_VOCAB_GGUF = ASSETS / "llama.cpp-vocab" / "ggml-vocab-qwen2.gguf"


# --- a small Go text/template renderer: the subset QWEN3_TEMPLATE uses, with Go's semantics -------------------


class GoJSON(dict):
    """A value Ollama prints through a String() method: compact JSON (api.ToolFunction, tool-call arguments)."""

    def __str__(self) -> str:
        return json.dumps(self, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>-?\d+)|(?P<var>\$\w*(?:\.\w+)*)|(?P<field>(?:\.\w+)+|\.)'
    r"|(?P<ident>\w+)|(?P<open>\()|(?P<close>\))(?P<chain>(?:\.\w+)*)|(?P<op>:=|=|,))"
)


def _token(m: re.Match) -> tuple[str, str, str | None]:
    kind = next(k for k, v in m.groupdict().items() if v is not None and k != "chain")
    return kind, m.group(kind), m.group("chain")


def _parse(template: str) -> list:
    """Template text -> nested nodes; trim markers applied as Go does (all whitespace next to the marker)."""
    pieces, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        pieces.append(("text", text.rstrip(" \t\r\n") if m.group(1) else text))
        pieces.append(("action", m.group(2).strip()))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = template[pos:]
    pieces.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    nodes, rest = _block(pieces, 0)
    assert rest == len(pieces), "unbalanced {{ end }}"
    return nodes


def _block(pieces: list, i: int) -> tuple[list, int]:
    nodes: list = []
    while i < len(pieces):
        kind, body = pieces[i]
        word = body.split(" ", 1)[0]
        if kind == "text":
            nodes.append(("text", body))
        elif word in ("end", "else"):
            return nodes, i
        elif word == "if":
            branches, otherwise = [], []
            cond = body[3:]
            while True:
                inner, i = _block(pieces, i + 1)
                branches.append((cond, inner))
                closing = pieces[i][1]
                if closing.startswith("else if "):
                    cond = closing[8:]
                    continue
                if closing == "else":
                    otherwise, i = _block(pieces, i + 1)
                break
            nodes.append(("if", branches, otherwise))
        elif word == "range":
            head = body[6:]
            names, _, expr = head.rpartition(":=") if ":=" in head else ("", "", head)
            inner, i = _block(pieces, i + 1)
            nodes.append(("range", [n.strip() for n in names.split(",") if n.strip()], expr, inner))
        elif re.match(r"\$\w+ :?= ", body):
            name, op, expr = body.split(" ", 2)
            nodes.append(("assign", name, op == ":=", expr))
        else:
            nodes.append(("print", body))
        i += 1
    return nodes, i


def _truth(value: Any) -> bool:
    if isinstance(value, (bool, int, str, list, dict)) or value is None:
        return bool(value)
    return True


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "<no value>" if value is None else str(value)


class _Renderer:
    def __init__(self, data: dict[str, Any]) -> None:
        self.root = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def render(self, nodes: list, dot: Any) -> str:
        out = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "print":
                out.append(_show(self.eval(node[1], dot)))
            elif kind == "assign":
                _, name, declare, expr = node
                value = self.eval(expr, dot)
                scope = self.scopes[-1] if declare else next(s for s in reversed(self.scopes) if name in s)
                scope[name] = value
            elif kind == "if":
                branch = next((body for cond, body in node[1] if _truth(self.eval(cond, dot))), node[2])
                out.append(self.scoped(branch, dot, {}))
            elif kind == "range":
                _, names, expr, body = node
                for index, item in enumerate(self.eval(expr, dot)):
                    bound = dict(zip(names, (index, item))) if len(names) == 2 else dict(zip(names, (item,)))
                    out.append(self.scoped(body, item, bound))
        return "".join(out)

    def scoped(self, nodes: list, dot: Any, variables: dict[str, Any]) -> str:
        self.scopes.append(variables)
        try:
            return self.render(nodes, dot)
        finally:
            self.scopes.pop()

    def eval(self, expr: str, dot: Any) -> Any:
        tokens = [_token(m) for m in _TOKEN.finditer(expr.strip())]
        thunk, rest = self.pipeline(tokens, dot)
        assert not rest, f"unparsed {rest} in {expr!r}"
        return thunk()

    def pipeline(self, tokens: list, dot: Any) -> tuple[Callable[[], Any], list]:
        """One command (a function and its arguments, or one operand) up to ')', as an unevaluated thunk."""
        args = []
        while tokens and tokens[0][0] != "close":
            arg, tokens = self.operand(tokens, dot)
            args.append(arg)
        if args[0] in _FUNCS.values():
            fn, fn_args = args[0], args[1:]
            return (lambda: fn(*fn_args)), tokens
        assert len(args) == 1, f"not a function: {args}"
        return args[0], tokens

    def operand(self, tokens: list, dot: Any) -> tuple[Any, list]:
        """A function, or a thunk for one operand: Go's and/or evaluate their arguments only as needed."""
        kind, text, _ = tokens[0]
        if kind == "open":
            inner, rest = self.pipeline(tokens[1:], dot)
            return (lambda: _fields(inner(), rest[0][2])), rest[1:]
        if kind == "ident" and text in _FUNCS:
            return _FUNCS[text], tokens[1:]
        if kind == "str":
            return (lambda: json.loads(text)), tokens[1:]
        if kind == "num":
            return (lambda: int(text)), tokens[1:]
        if kind == "ident":
            return (lambda: {"true": True, "false": False}[text]), tokens[1:]
        if kind == "var":
            name, _, fields = text.partition(".")
            scope = next(s for s in reversed(self.scopes) if name in s)
            return (lambda: _fields(scope[name], fields)), tokens[1:]
        assert kind == "field", text
        return (lambda: _fields(dot, text)), tokens[1:]


def _fields(value: Any, chain: str) -> Any:
    for name in filter(None, chain.split(".")):
        value = value[name]  # KeyError: the template names a field Ollama does not have
    return value


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A Go function whose arguments are all evaluated (they arrive as thunks)."""
    return lambda *thunks: fn(*(t() for t in thunks))


def _and(*thunks: Callable[[], Any]) -> Any:
    value = True
    for thunk in thunks:
        value = thunk()
        if not _truth(value):
            return value
    return value


def _or(*thunks: Callable[[], Any]) -> Any:
    value = False
    for thunk in thunks:
        value = thunk()
        if _truth(value):
            return value
    return value


_FUNCS = {
    "and": _and,
    "or": _or,
    "not": _eager(lambda x: not _truth(x)),
    "eq": _eager(lambda a, *bs: any(a == b for b in bs)),
    "ne": _eager(lambda a, b: a != b),
    "gt": _eager(lambda a, b: a > b),
    "ge": _eager(lambda a, b: a >= b),
    "len": _eager(len),
    "slice": _eager(lambda x, i, j=None: x[i:j]),
    "index": _eager(lambda x, i: x[i]),
}


def render_go(template: str, data: dict[str, Any]) -> str:
    """Render a Go text/template (the subset QWEN3_TEMPLATE uses) with `data` as dot."""
    return _Renderer(data).render(_parse(template), data)


def test_renderer_follows_go_semantics():
    # Trim markers eat all adjacent whitespace, variables set inside range persist, and/or short-circuit.
    template = (
        '{{- $n := 0 }}\n  {{- range $i, $x := .Xs }}{{ $n = $i }}{{ end }} n={{ $n }} {{ or .E "d" }}\n{{ "x" -}}\n y'
    )
    assert render_go(template, {"Xs": [1, 2, 3], "E": ""}) == " n=2 d\nxy"
    assert render_go("{{ if or .T (index .Xs 9) }}ok{{ end }}", {"T": True, "Xs": []}) == "ok"


# --- conversations, in Hugging Face form and as Ollama passes them to the template -------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city, e.g. <Paris> & co.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "system-user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "你好！2+2 等于几？"},
    ],
    "multi-turn-with-old-reasoning": [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7", "reasoning_content": "Small primes: 2, 3, 5, 7."},
        {"role": "user", "content": "Another one?"},
    ],
    "no-system-late-system": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "How are you?"},
    ],
    "tools": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I need both tools.",
            "tool_calls": [call("get_weather", city="Paris"), call("get_time", tz="Europe/Paris")],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": "14:05"},
    ],
    "tools-content-and-call-no-system": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", city="Oslo")]},
        {"role": "tool", "content": "-3"},
        {"role": "assistant", "content": "It is -3 degrees in Oslo."},
        {"role": "user", "content": "Thanks!"},
    ],
}
TOOLS = {"tools": [WEATHER_TOOL, TIME_TOOL], "tools-content-and-call-no-system": [WEATHER_TOOL]}


def ollama_values(messages: list[dict[str, Any]], tools: list[dict] | None, think: bool | None) -> dict[str, Any]:
    """The data Ollama's template.Execute passes: api.Message fields, api.Tools, Think and IsThinkSet."""
    return {
        "Messages": [
            {
                "Role": m["role"],
                "Content": m["content"],
                "Thinking": m.get("reasoning_content", ""),
                "ToolCalls": [
                    {"Function": {"Name": c["function"]["name"], "Arguments": GoJSON(c["function"]["arguments"])}}
                    for c in m.get("tool_calls", [])
                ],
            }
            for m in messages
        ],
        "Tools": [{"Type": t["type"], "Function": GoJSON(t["function"])} for t in tools or []],
        "Think": bool(think),
        "IsThinkSet": think is not None,
    }


def canonical_json_lines(text: str) -> str:
    """Rewrite lines that are JSON objects in one canonical form: Ollama writes tool JSON compactly, HF with spaces."""

    def canonical(line: str) -> str:
        try:
            return json.dumps(json.loads(line), sort_keys=True) if line.startswith("{") else line
        except json.JSONDecodeError:
            return line

    return "\n".join(canonical(line) for line in text.split("\n"))


@pytest.fixture(scope="module")
def template(tmp_path_factory, qwen3_gguf) -> str:
    out = tmp_path_factory.mktemp("ollama")
    export_ollama(qwen3_gguf, out)
    text = (out / "Modelfile").read_text()
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory, qwen3_tokenizer) -> Path:
    """A tensor-less GGUF carrying Qwen3's chat template: all export ollama reads."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "My Model-Q4.gguf"
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_chat_template(qwen3_tokenizer.chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("think", [None, True, False], ids=["think-unset", "think", "no-think"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_template_renders_like_hf(template, qwen3_tokenizer, name, think):
    messages, tools = CONVERSATIONS[name], TOOLS.get(name)
    thinking = {} if think is None else {"enable_thinking": think}
    expected = qwen3_tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, **thinking
    )
    rendered = render_go(template, ollama_values(messages, tools, think))
    if tools:
        # Only the JSON inside tool lines may differ (Ollama serialises it itself), never the text around it.
        assert canonical_json_lines(rendered) == canonical_json_lines(expected)
        assert rendered.count("\n") == expected.count("\n")
    else:
        assert rendered == expected


def test_last_assistant_message_is_left_open_for_prefill(template, qwen3_tokenizer):
    messages = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}]
    expected = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    rendered = render_go(template, ollama_values(messages, None, None))
    assert expected.endswith("<|im_end|>\n")
    assert rendered == expected.removesuffix("<|im_end|>\n")


def test_template_lets_ollama_find_think_and_tool_call_tags(template):
    # Ollama infers these from the template (thinking/template.go, tools/template.go): text around .Thinking,
    # and the first text inside `if .ToolCalls`.
    assert re.search(r"\}\}<think>\n\{\{ \.Thinking \}\}\n</think>\n\n\{\{ end \}\}", template)
    assert re.search(r"\{\{- if \.ToolCalls \}\}\{\{ range [^}]*\}\}<tool_call>\n", template)


# --- QwQ-32B and the DeepSeek-R1 distills: their own templates, restated by the Modelfile --------------------------

FAMILY_TEMPLATES = {
    "qwq": ASSETS / "chat-templates/Qwen-QwQ-32B.jinja",
    "r1": ASSETS / "chat-templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "r1-0528": Path(__file__).parent / "data/chat-templates/deepseek-ai-DeepSeek-R1-0528-Qwen3-8B.jinja",
}
R1_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]


def gguf_with_template(path: Path, chat_template: str) -> Path:
    """A tensor-less GGUF carrying `chat_template`: all export ollama reads."""
    import gguf

    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module", params=list(FAMILY_TEMPLATES))
def family(request, tmp_path_factory, qwen3_tokenizer) -> tuple[str, Any, str, str]:
    """(family, a copy of the Qwen3 tokenizer carrying the family's own template, the Modelfile's TEMPLATE, text)."""
    import copy

    path = FAMILY_TEMPLATES[request.param]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/assets)")
    tokenizer = copy.deepcopy(qwen3_tokenizer)
    tokenizer.chat_template = path.read_text()
    if request.param.startswith("r1"):  # R1's tokenizers: the turn markers are special tokens, BOS is one of them
        tokenizer.add_special_tokens({"additional_special_tokens": R1_SPECIAL})
        tokenizer.bos_token = R1_SPECIAL[0]
    out = tmp_path_factory.mktemp(request.param)
    export_ollama(gguf_with_template(out / f"{request.param}.gguf", tokenizer.chat_template), out / "ollama")
    text = (out / "ollama" / "Modelfile").read_text()
    return request.param, tokenizer, re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE).group(1), text


def test_qwq_and_r1_templates_render_like_their_own_jinja_token_by_token(family):
    kind, tokenizer, template, _ = family
    # The R1 Modelfiles leave tool calls out: Ollama cannot write R1's tool-call blocks.
    names = [name for name in sorted(CONVERSATIONS) if kind == "qwq" or name not in TOOLS]
    assert len(names) == (5 if kind == "qwq" else 3)
    for name in names:
        messages, tools = CONVERSATIONS[name], TOOLS.get(name)
        expected = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        rendered = render_go(template, ollama_values(messages, tools, None))
        # QwQ and the distills open the reasoning in the prompt; R1-0528-Qwen3 ends it with the assistant's header.
        assert expected.endswith("<｜Assistant｜>" if kind == "r1-0528" else "<think>\n"), name
        if tools:
            assert canonical_json_lines(rendered) == canonical_json_lines(expected), name
            assert rendered.count("\n") == expected.count("\n"), name
        else:
            assert rendered == expected, name
            encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            assert encode(rendered) == encode(expected), name


def test_qwq_and_r1_modelfiles_stop_and_sample_as_their_model_cards(family):
    kind, _, template, text = family
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)
    params = dict(re.findall(r"^PARAMETER (\w+) ([^\"\s]+)$", text, re.MULTILINE))
    if kind == "qwq":
        assert stops == ["<|im_end|>", "<|endoftext|>"]
        assert params == {"temperature": "0.6", "top_p": "0.95", "top_k": "40", "min_p": "0"}
    else:
        assert stops == ["<｜end▁of▁sentence｜>", "<｜User｜>"]
        assert params == {"temperature": "0.6", "top_p": "0.95"}
    # Ollama finds the thinking tags as the text around .Thinking.
    assert re.search(r"\}\}<think>\n\{\{ \.Thinking \}\}\n</think>\n\n\{\{ end \}\}", template)


def test_parameters_are_added_or_replace_the_presets_and_stop_is_refused(tmp_path, qwen3_gguf):
    from tuneforge.export.ollama import parse_parameters

    parameters = parse_parameters(["num_ctx=8192", "temperature=0.5"])
    export_ollama(qwen3_gguf, tmp_path, parameters=parameters)
    text = (tmp_path / "Modelfile").read_text()
    params = dict(re.findall(r"^PARAMETER (\w+) ([^\"\s]+)$", text, re.MULTILINE))
    assert params == {"temperature": "0.5", "top_p": "0.95", "top_k": "20", "min_p": "0", "num_ctx": "8192"}
    with pytest.raises(UserError, match=r"--parameter 'num_ctx': expected KEY=VALUE"):
        parse_parameters(["num_ctx"])
    with pytest.raises(UserError, match=r"--parameter stop: the stop strings are the chat template's own"):
        parse_parameters(["stop=x"])


def test_modelfile_has_from_stops_sampling_and_prints_create(tmp_path, qwen3_gguf):
    command = export_ollama(qwen3_gguf, tmp_path / "ollama", sampling="non-thinking")
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    from_path = re.search(r"^FROM (.+)$", text, re.MULTILINE).group(1)
    assert (tmp_path / "ollama" / from_path).resolve() == qwen3_gguf.resolve()
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE) == ["<|im_end|>", "<|endoftext|>"]
    params = dict(re.findall(r"^PARAMETER (temperature|top_p|top_k) (\S+)$", text, re.MULTILINE))
    assert params == {"temperature": "0.7", "top_p": "0.8", "top_k": "20"}
    assert command == f"ollama create my-model-q4 -f {tmp_path / 'ollama' / 'Modelfile'}"
    export_ollama(qwen3_gguf, tmp_path / "thinking")
    text = (tmp_path / "thinking" / "Modelfile").read_text()
    params = dict(re.findall(r"^PARAMETER (temperature|top_p|top_k) (\S+)$", text, re.MULTILINE))
    assert params == {"temperature": "0.6", "top_p": "0.95", "top_k": "20"}


def test_existing_modelfile_needs_force(tmp_path, qwen3_gguf):
    export_ollama(qwen3_gguf, tmp_path)
    before = (tmp_path / "Modelfile").read_text()
    with pytest.raises(UserError, match=r"Modelfile already exists; pass --force"):
        export_ollama(qwen3_gguf, tmp_path, sampling="non-thinking")
    assert (tmp_path / "Modelfile").read_text() == before
    export_ollama(qwen3_gguf, tmp_path, sampling="non-thinking", force=True)
    assert (tmp_path / "Modelfile").read_text() != before


def test_non_qwen3_template_is_refused(tmp_path):
    if not QWEN2_VOCAB_GGUF.is_file():
        pytest.skip(f"{QWEN2_VOCAB_GGUF} not found (../shared/assets)")
    with pytest.raises(UserError, match=r"not one export ollama can restate") as err:
        export_ollama(QWEN2_VOCAB_GGUF, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "Modelfile").exists()


def test_several_system_prompts_render_as_each_family_jinja_places_them(family):
    kind, tokenizer, template, _ = family
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "3+3?"},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_go(template, ollama_values(messages, None, None)) == expected
    # QwQ: a later system prompt is a turn of its own; the distills keep the last one; R1-0528-Qwen3 joins them all.
    starts = {
        "qwq": "<|im_start|>system\nBe terse.<|im_end|>\n",
        "r1": "<｜begin▁of▁sentence｜>Answer in French.<｜User｜>",
        "r1-0528": "<｜begin▁of▁sentence｜>Be terse.\n\nAnswer in French.<｜User｜>",
    }
    assert expected.startswith(starts[kind])
