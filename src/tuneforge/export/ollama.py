"""Write an Ollama Modelfile for a GGUF: the chat template as a Go template, stop tokens, Qwen3's sampling.

Ollama renders prompts with Go's text/template, not Jinja, so the model's Jinja chat template cannot be
passed through. QWEN3_TEMPLATE re-states Qwen3's template in Go and produces the same text as
`tokenizer.apply_chat_template` for the conversations Ollama can send (tests/test_export_ollama.py renders
both and compares). Where Ollama itself differs, the template cannot help: it serialises tool schemas and
tool-call arguments as compact JSON, and merges consecutive messages of the same role.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.export import refuse_existing
from tuneforge.io import atomic_write_text, check_writable

# The Go template mirrors the Jinja one block by block. Two layout rules come from Ollama, which infers
# from the template how to parse model output: the thinking tags are the text around `{{ .Thinking }}`
# inside `range .Messages`, and the tool-call tag is the first text inside `{{ if .ToolCalls }}`.
# A last assistant message is a prefill that Ollama continues, so it is left open (no <|im_end|>).
QWEN3_TEMPLATE = """\
{{- $lastQuery := -1 }}{{ $system := "" }}{{ $hasSystem := false }}
{{- range $i, $m := .Messages }}
{{- if eq .Role "user" }}{{ $lastQuery = $i }}{{ end }}
{{- if and (eq $i 0) (eq .Role "system") }}{{ $hasSystem = true }}{{ $system = .Content }}{{ end }}
{{- end }}
{{- if .Tools }}<|im_start|>system
{{ if $hasSystem }}{{ $system }}

{{ end }}# Tools

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
{{ if and (ge $lastQuery 0) (gt $i $lastQuery) (or $last .Thinking) }}<think>
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
{{- if not $last }}<|im_end|>
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
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}{{ end }}
{{- $prev = .Role }}
{{- end }}"""

STOPS = ("<|im_end|>", "<|endoftext|>")
# Qwen3's recommended sampling (model card): thinking mode, and non-thinking mode (think: false).
SAMPLING = {
    "thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    "non-thinking": {"temperature": 0.7, "top_p": 0.8, "top_k": 20},
}


def export_ollama(gguf_file: Path, out: Path, sampling: str = "thinking", force: bool = False) -> str:
    """Write `out`/Modelfile for `gguf_file`; returns the `ollama create` command to run."""
    if sampling not in SAMPLING:
        raise UserError(f"--sampling {sampling}: expected one of {', '.join(SAMPLING)}")
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: GGUF file not found (make one with `tuneforge export gguf`)")
    _check_qwen3_template(gguf_file)
    check_writable(out, "--out", folder=True)
    modelfile = out / "Modelfile"
    refuse_existing(modelfile, force)
    atomic_write_text(modelfile, modelfile_text(_from_path(gguf_file, out), sampling))
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf_file.stem.lower()).strip("-.") or "model"
    return f"ollama create {name} -f {modelfile}"


def modelfile_text(source: str, sampling: str = "thinking") -> str:
    """The Modelfile for a Qwen3-family GGUF at `source` (as FROM will read it)."""
    other = "non-thinking" if sampling == "thinking" else "thinking"
    alternative = ", ".join(f"{k} {v}" for k, v in SAMPLING[other].items())
    lines = [
        "# Written by tuneforge. Qwen3 chat template (system, tools, <think>); stops at the end of a turn.",
        f"FROM {source}",
        "",
        f'TEMPLATE """{QWEN3_TEMPLATE}"""',
        "",
        *(f'PARAMETER stop "{stop}"' for stop in STOPS),
        f"# Qwen3's recommended sampling for {sampling} mode; for {other} mode use {alternative}.",
        *(f"PARAMETER {key} {value}" for key, value in SAMPLING[sampling].items()),
    ]
    return "\n".join(lines) + "\n"


def _from_path(gguf_file: Path, out: Path) -> str:
    # Ollama resolves a relative FROM against the Modelfile's folder, so the pair can move together.
    relative = os.path.relpath(gguf_file.resolve(), out.resolve())
    return relative if relative.startswith(".") else f"./{relative}"


def _check_qwen3_template(gguf_file: Path) -> None:
    from tuneforge.export.gguf import read_metadata

    template = read_metadata(gguf_file, ["tokenizer.chat_template"]).get("tokenizer.chat_template", "")
    check_qwen3_template(template, f"{gguf_file}: this GGUF's")


def check_qwen3_template(template: str | None, whose: str) -> None:
    """Fail where `template` (described by `whose`) is not a Qwen3 one, the only template a Modelfile gets."""
    if not template or "<|im_start|>" not in template or "<think>" not in template:
        raise UserError(
            f"{whose} chat template is not a Qwen3 one (no <|im_start|> / <think>), and export ollama writes "
            "Qwen3's; export with --to gguf only"
        )
