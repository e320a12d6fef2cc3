"""Structured output: OpenAI's `response_format` as a token mask per batch row, through xgrammar (as vLLM does).

xgrammar compiles a JSON schema against the tokenizer's vocabulary; each constrained row keeps its own
`GrammarMatcher`, which fills the row's bitmask of tokens that keep the output valid and is told every token
picked. Rows without a response_format are not touched, so a constrained request changes nothing for its neighbours
in a batch, and the end-of-sequence token is allowed only once the JSON is complete.

- Reasoning (as vLLM's reasoning-aware structured outputs): thinking is free and only the answer after `</think>`
  is constrained. A prompt that opened `<think>` (QwQ, R1) starts free; one that closed it (Qwen3 with
  enable_thinking=False) starts constrained; otherwise the first token may be `<think>` or the JSON's first token.
  Reasoning cut off by max tokens leaves no answer, as without a response_format.
- The JSON is compact (one space after `,` and `:`, no other whitespace: xgrammar's any_whitespace=False, vLLM's
  `disable_any_whitespace`): with free whitespace a weak model can spend all its tokens on blanks.
- xgrammar is the `structured` extra: without it, a response_format is refused in one line.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tuneforge.constants import THINK_CLOSE, THINK_OPEN
from tuneforge.errors import UserError
from tuneforge.infer.backend import ResponseFormat

if TYPE_CHECKING:
    import torch

JSON_OBJECT = '{"type": "object"}'  # what {"type": "json_object"} asks for: any object
# xgrammar's errors start with a timestamp and its C++ source position: "[07:01:02] /project/cpp/x.cc:12: ".
_XGRAMMAR_PREFIX = re.compile(r"^(\[[\d:]+\] \S+:\d+: )?(Check failed: \(.*?\) is false: )?")
# xgrammar 0.2.9 (mlc-ai/xgrammar#800, open): a string with minLength, maxLength or a pattern matches this class,
# which lets raw control characters through (a TAB: invalid JSON, refused by json.loads); its plain string rule
# excludes \0-\x1f. We narrow the class in the grammar's text; this goes when xgrammar fixes it.
_BOUNDED_CHAR, _JSON_CHAR = r"[^\"\\\r\n]", r"[^\0-\x1f\"\\\r\n]"


def parse_response_format(value: dict[str, Any] | None) -> ResponseFormat | None:
    """An OpenAI `response_format` object as the engine's ResponseFormat (None for plain text), else UserError."""
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return ResponseFormat()
    if kind != "json_schema":
        raise UserError(f"response_format.type: '{kind}' is not one of text, json_object, json_schema")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict | bool):
        raise UserError("response_format.json_schema.schema: a JSON schema object is required")
    return ResponseFormat(json.dumps(spec["schema"], ensure_ascii=False), str(spec.get("name") or "response"))


def openai_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    """The `response_format` object a server takes for `fmt` (parse_response_format's inverse)."""
    if fmt.schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": json.loads(fmt.schema)}}


def require_xgrammar() -> Any:
    """The xgrammar module, or one line saying how to install it."""
    try:
        import xgrammar
    except ImportError:
        raise UserError(
            "response_format needs xgrammar for constrained decoding: pip install 'tuneforge[structured]'"
        ) from None
    return xgrammar


class Constraint:
    """One row's grammar state: free while the model thinks, then every token masked to keep the JSON valid."""

    def __init__(self, matcher: Any, phase: str, think: tuple[int, int] | None) -> None:
        self._matcher = matcher
        self.phase = phase  # "start" (thinking may open), "thinking" (free), "answer" (constrained)
        self._think = think  # (<think>, </think>) token ids

    def fill(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write this row's allowed tokens into bitmask[row]; False when nothing is masked (thinking)."""
        if self.phase == "thinking":
            return False
        self._matcher.fill_next_token_bitmask(bitmask, row)
        if self.phase == "start" and self._think is not None:
            word, bit = divmod(self._think[0], 32)
            bitmask[row, word] |= (1 << bit) if bit < 31 else -(1 << 31)  # int32 words: bit 31 is the sign
        return True

    def accept(self, token: int) -> None:
        """Advance past the token the row picked (a token its mask allowed)."""
        if self.phase == "start":
            self.phase = "thinking" if self._think is not None and token == self._think[0] else "answer"
        if self.phase == "thinking":
            if self._think is not None and token == self._think[1]:
                self.phase = "answer"
            return
        if not self._matcher.accept_token(token):  # the mask allowed it: a mismatch is a bug, not user input
            raise RuntimeError(f"structured output: the grammar refused token {token} that its mask allowed")


class Grammars:
    """Compiles response formats for one tokenizer (xgrammar caches compiled schemas) and starts row constraints."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: set[int]) -> None:
        self._tokenizer, self.vocab_size, self._stop_ids = tokenizer, vocab_size, sorted(stop_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()
        ids = [tokenizer.convert_tokens_to_ids(tag) for tag in (THINK_OPEN, THINK_CLOSE)]
        unknown = tokenizer.unk_token_id
        self._think = (ids[0], ids[1]) if all(isinstance(i, int) and i != unknown for i in ids) else None

    def compile(self, fmt: ResponseFormat) -> Any:
        """The compiled grammar of a response format; a schema xgrammar cannot take is a UserError."""
        xgr = require_xgrammar()
        with self._lock:  # building the vocabulary tables takes ~2 s: once, on the first constrained request
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info)
        try:
            grammar = str(xgr.Grammar.from_json_schema(fmt.schema or JSON_OBJECT, any_whitespace=False))
            return self._compiler.compile_grammar(xgr.Grammar.from_ebnf(grammar.replace(_BOUNDED_CHAR, _JSON_CHAR)))
        except RuntimeError as exc:
            first = _XGRAMMAR_PREFIX.sub("", (str(exc).strip().splitlines() or ["not a schema"])[0])
            raise UserError(f"response_format: the JSON schema was refused: {first}") from None

    def constraint(self, fmt: ResponseFormat, prompt: str | None) -> Constraint:
        """A fresh row constraint for output that follows `prompt` (None: a raw completion, no thinking)."""
        xgr = require_xgrammar()
        matcher = xgr.GrammarMatcher(self.compile(fmt))
        end = (prompt or "").rstrip()
        if prompt is None or self._think is None or end.endswith(THINK_CLOSE):
            phase = "answer"
        else:
            phase = "thinking" if end.endswith(THINK_OPEN) else "start"
        return Constraint(matcher, phase, self._think)


def mask_logits(constraints: Sequence[Constraint | None], logits: torch.Tensor) -> None:
    """Set to -inf, in place, every token a constrained row may not pick next (logits: one row per constraint)."""
    xgr = require_xgrammar()
    bitmask = xgr.allocate_token_bitmask(len(constraints), logits.shape[-1])
    rows = [i for i, constraint in enumerate(constraints) if constraint is not None and constraint.fill(bitmask, i)]
    if rows:
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
