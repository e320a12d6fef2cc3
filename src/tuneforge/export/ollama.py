"""Write an Ollama Modelfile for a GGUF: the chat template as a Go template, stop tokens, the family's sampling.

Ollama renders prompts with Go's text/template, not Jinja, so the model's Jinja chat template cannot be
passed through. Each family's template here (Qwen3; QwQ; the DeepSeek-R1 distills; R1-0528-Qwen3) re-states its
Jinja template in Go and produces the same text as `tokenizer.apply_chat_template` for the conversations Ollama can send
(tests/test_export_ollama.py renders both and compares). The family is read from the GGUF's own chat template.
Where Ollama itself differs, the template cannot help: it serialises tool schemas and tool-call arguments as
compact JSON, and merges consecutive messages of the same role.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.export import refuse_existing
from tuneforge.io import atomic_write_text, check_writable

# Each Go template mirrors its Jinja one block by block. Two layout rules come from Ollama, which infers
# from the template how to parse model output: the thinking tags are the text around `{{ .Thinking }}`
# inside `range .Messages`, and the tool-call tag is the first text inside `{{ if .ToolCalls }}`.
# A last assistant message is a prefill that Ollama continues, so it is left open (no <|im_end|>).

# Shared by the Qwen3 and QwQ templates: the tool signatures (after the system prompt), the system prompt alone,
# user and later system turns, the assistant header; then, after the assistant turn, tool results and the
# generation prompt's header.
_QWEN_TOOLS_AND_TURNS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ else if $hasSystem }}<|im_start|>system
{{ $system }}<|im_end|>
{{ end }}
{{- $prev := "" }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if and (eq .Role "system") $i }}<|im_start|>system
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
"""
_QWEN_TOOL_RESULTS = """{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}
{{- if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>
{{- if or $last (ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
"""

QWEN3_TEMPLATE = (
    """\
{{- $lastQuery := -1 }}{{ $system := "" }}{{ $hasSystem := false }}
{{- range $i, $m := .Messages }}
{{- if eq .Role "user" }}{{ $lastQuery = $i }}{{ end }}
{{- if and (eq $i 0) (eq .Role "system") }}{{ $hasSystem = true }}{{ $system = .Content }}{{ end }}
{{- end }}
{{- if .Tools }}<|im_start|>system
{{ if $hasSystem }}{{ $system }}

{{ end }}"""
    + _QWEN_TOOLS_AND_TURNS
    + """{{ if and (ge $lastQuery 0) (gt $i $lastQuery) (or $last .Thinking) }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}
{{- if and .Content (len .ToolCalls) }}
{{ end }}
{{- if .ToolCalls }}{{ range $j, $call := .ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>
{{- if gt (len (slice $m.ToolCalls $j)) 1 }}
{{ end }}{{ end }}{{ end }}
"""
    + _QWEN_TOOL_RESULTS
    + """{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}{{ end }}
{{- $prev = .Role }}
{{- end }}"""
)

# QwQ-32B's template: Qwen's turns and tool blocks; history keeps only what follows the last </think> (Ollama passes
# the answer apart from .Thinking, so that is .Content); the generation prompt opens <think>, so the model's output
# starts inside its reasoning. The thinking tags around .Thinking (a prefilled last turn) let Ollama find them.
QWQ_TEMPLATE = (
    """\
{{- $system := "" }}{{ $hasSystem := false }}
{{- range $i, $m := .Messages }}
{{- if and (eq $i 0) (eq .Role "system") }}{{ $hasSystem = true }}{{ $system = .Content }}{{ end }}
{{- end }}
{{- if .Tools }}<|im_start|>system
{{ if $hasSystem }}{{ $system }}{{ end }}

"""
    + _QWEN_TOOLS_AND_TURNS
    + """{{- if or .Content (not .ToolCalls) }}
{{ end }}
{{- if and $last .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}
{{- if .ToolCalls }}{{ range .ToolCalls }}
<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ end }}{{ end }}
"""
    + _QWEN_TOOL_RESULTS
    + """<think>
{{ end }}
{{- $prev = .Role }}
{{- end }}"""
)

# The DeepSeek-R1 distills' template: one system prompt (the last one given) after the BOS token, then
# <｜User｜> / <｜Assistant｜> turns; history keeps only the answer; the generation prompt opens <think>. Tool calls
# are left out: Ollama has no way to write R1's tool-call blocks.
R1_TEMPLATE = """\
{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end -}}
<｜begin▁of▁sentence｜>{{ $system }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>
{{- if and $last .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}{{ if not $last }}<｜end▁of▁sentence｜>{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<｜Assistant｜><think>
{{ end }}
{{- end }}"""

# DeepSeek-R1-0528-Qwen3-8B's template: every system prompt, joined by blank lines, after the BOS token; each user
# turn ends with <｜Assistant｜> itself, so the generation prompt adds nothing and the model writes <think> on its
# own; history keeps only the answer. Tool calls are left out, as for the distills.
R1_0528_TEMPLATE = """\
<｜begin▁of▁sentence｜>
{{- $first := true }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ if not $first }}

{{ end }}{{ .Content }}{{ $first = false }}{{ end }}{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}<｜Assistant｜>
{{- else if eq .Role "assistant" }}
{{- if and $last .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}{{ if not $last }}<｜end▁of▁sentence｜>{{ end }}
{{- end }}
{{- end }}"""


@dataclass(frozen=True)
class Family:
    """What a Modelfile says for one family of chat templates: the Go template, stop strings, sampling presets."""

    name: str
    template: str
    stops: tuple[str, ...]
    sampling: dict[str, dict[str, float]]  # preset -> PARAMETERs (the model card's recommendations)


QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")
R1_STOPS = ("<｜end▁of▁sentence｜>", "<｜User｜>")
# The model cards' recommended sampling: Qwen3 in thinking and non-thinking mode (think: false); QwQ-32B; DeepSeek-R1
# (its distills and R1-0528-Qwen3).
FAMILIES = {
    "qwen3": Family(
        "Qwen3",
        QWEN3_TEMPLATE,
        QWEN_STOPS,
        {
            "thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0},
            "non-thinking": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0},
        },
    ),
    "qwq": Family(
        "QwQ", QWQ_TEMPLATE, QWEN_STOPS, {"thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 40, "min_p": 0}}
    ),
    "r1": Family("DeepSeek-R1", R1_TEMPLATE, R1_STOPS, {"thinking": {"temperature": 0.6, "top_p": 0.95}}),
    "r1-0528": Family(
        "DeepSeek-R1-0528-Qwen3", R1_0528_TEMPLATE, R1_STOPS, {"thinking": {"temperature": 0.6, "top_p": 0.95}}
    ),
}


def export_ollama(
    gguf_file: Path,
    out: Path,
    sampling: str = "thinking",
    force: bool = False,
    parameters: dict[str, str] | None = None,
) -> str:
    """Write `out`/Modelfile for `gguf_file`; returns the `ollama create` command to run.

    `parameters`: further PARAMETER lines (num_ctx, temperature, ...), replacing the preset's value of that name.
    """
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: GGUF file not found (make one with `tuneforge export gguf`)")
    family = _gguf_family(gguf_file)
    if sampling not in family.sampling:
        raise UserError(f"--sampling {sampling}: {family.name} has {', '.join(family.sampling)}")
    check_writable(out, "--out", folder=True)
    modelfile = out / "Modelfile"
    refuse_existing(modelfile, force)
    atomic_write_text(modelfile, modelfile_text(_from_path(gguf_file, out), family, sampling, parameters))
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf_file.stem.lower()).strip("-.") or "model"
    return f"ollama create {name} -f {modelfile}"


def modelfile_text(
    source: str, family: Family, sampling: str = "thinking", parameters: dict[str, str] | None = None
) -> str:
    """The Modelfile for a GGUF at `source` (as FROM will read it) of chat-template `family`."""
    preset = {key: str(value) for key, value in family.sampling[sampling].items()}
    others = [f"{other} mode: " + ", ".join(f"{k} {v}" for k, v in values.items())
              for other, values in family.sampling.items() if other != sampling]  # fmt: skip
    lines = [
        f"# Written by tuneforge. {family.name} chat template; stops at the end of a turn.",
        f"FROM {source}",
        "",
        f'TEMPLATE """{family.template}"""',
        "",
        *(f'PARAMETER stop "{stop}"' for stop in family.stops),
        f"# {family.name}'s recommended sampling for {sampling} mode" + "".join(f"; for {other}" for other in others),
        *(f"PARAMETER {key} {value}" for key, value in (preset | (parameters or {})).items()),
    ]
    return "\n".join(lines) + "\n"


def parse_parameters(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` flags to Modelfile PARAMETERs (stop is the family's, so it is refused here)."""
    parameters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value or " " in key:
            raise UserError(f"--parameter '{item}': expected KEY=VALUE, e.g. --parameter num_ctx=8192")
        if key == "stop":
            raise UserError("--parameter stop: the stop strings are the chat template's own end-of-turn tokens")
        parameters[key] = value
    return parameters


def _from_path(gguf_file: Path, out: Path) -> str:
    # Ollama resolves a relative FROM against the Modelfile's folder, so the pair can move together.
    relative = os.path.relpath(gguf_file.resolve(), out.resolve())
    return relative if relative.startswith(".") else f"./{relative}"


def _gguf_family(gguf_file: Path) -> Family:
    from tuneforge.export.gguf import read_metadata

    template = read_metadata(gguf_file, ["tokenizer.chat_template"]).get("tokenizer.chat_template", "")
    return template_family(template, f"{gguf_file}: this GGUF's")


def template_family(template: str | None, whose: str) -> Family:
    """The family of chat template `template` (described by `whose`) that a Modelfile can restate, or a UserError."""
    template = template or ""
    if "<｜Assistant｜>" in template and "<｜User｜>" in template:
        # R1-0528-Qwen3 ends each user turn with the assistant's header; the distills open it in the generation prompt.
        return FAMILIES["r1-0528" if "'<｜User｜>' + content + '<｜Assistant｜>'" in template else "r1"]
    if "<|im_start|>" in template and "<|im_start|>assistant\\n<think>\\n" in template:
        return FAMILIES["qwq"]  # the generation prompt opens the think block
    if "<|im_start|>" in template and "<think>" in template:
        return FAMILIES["qwen3"]
    raise UserError(
        f"{whose} chat template is not one export ollama can restate (Qwen3, QwQ, DeepSeek-R1: <|im_start|> or "
        "<｜User｜> turns with <think>); export with --to gguf only"
    )
