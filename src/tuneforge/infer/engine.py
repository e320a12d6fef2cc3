"""The inference engine behind `tuneforge chat` and `tuneforge serve`.

It renders prompts with the tokenizer's own chat template (DESIGN.md invariant 1, so inference sees exactly
what training rendered), generates token by token with a KV cache, decodes incrementally and splits the
text into reasoning, answer and tool calls as it streams (infer/parse.py).

Tokens come from a `TokenSource`: `load_engine` builds one over real weights (a base, LoRA adapters on it
switched per forward pass, further full models); tests pass a scripted one to force exact outputs. The
engine itself owns everything after the token: eos, max tokens, stop strings, decoding, parsing, counts.

    engine = load_engine(resolve_spec(run="runs/mybot"))
    gen = engine.chat([Message("user", "Who are you?")], SamplingParams(temperature=0), enable_thinking=True)
    for delta in gen:
        print(delta.reasoning or delta.content, end="")
    gen.result().finish_reason
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tuneforge.data.conversation import Message, ToolCall
from tuneforge.errors import UserError
from tuneforge.infer.parse import THINK_OPEN, Delta, OutputParser, StopMatcher

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerBase

    from tuneforge.infer.spec import ModelSpec


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are picked; None takes the model's generation_config.json value (greedy if it has none)."""

    max_new_tokens: int | None = None  # None: up to the end of the context
    temperature: float | None = None  # 0 is greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: off
    seed: int | None = None  # fixes sampling for this request alone
    stop: tuple[str, ...] = ()  # the output ends before the first of these


GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: smaller temperatures decode greedily

# (prompt token ids, sampling params, served model name) -> an endless stream of next-token ids.
TokenSource = Callable[[list[int], SamplingParams, str], Iterator[int]]


@dataclass
class ChatResult:
    """A finished generation: reasoning (None when there was no think block), answer, tool calls, counts."""

    reasoning: str | None
    content: str
    tool_calls: list[ToolCall]
    finish_reason: str  # stop | length | tool_calls | abort
    prompt_tokens: int
    completion_tokens: int

    def to_message(self) -> Message:
        """The assistant turn to append to the conversation."""
        return Message("assistant", self.content, reasoning=self.reasoning, tool_calls=list(self.tool_calls))


class IncrementalDecoder:
    """Token ids to text pieces; a character split across tokens is held back until it is whole."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
        self._ids: list[int] = []
        self._prefix = self._read = 0  # decode from _prefix; text up to _read was already returned

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (maybe empty)."""
        self._ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back, at the end of the output."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        # Decoding a short window, not the whole output, keeps each step O(1) (as vLLM's detokenizer does).
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]


class Generation:
    """One generation, run lazily: iterate it for Deltas; counts and finish_reason are set when it ends."""

    def __init__(
        self, engine: Engine, model: str, prompt_ids: list[int], params: SamplingParams, parser: OutputParser
    ) -> None:
        self.model = model
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._engine, self._prompt_ids, self._params, self._parser = engine, prompt_ids, params, parser
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._started = self._cancelled = False

    def cancel(self) -> None:
        """Stop before the next token (safe from another thread); the model is free at once."""
        self._cancelled = True

    def __iter__(self) -> Iterator[Delta]:
        if self._started:
            raise RuntimeError("a Generation runs once; call engine.chat again for another")
        self._started = True
        engine, params = self._engine, self._params
        decoder, stops = IncrementalDecoder(engine.tokenizer), StopMatcher(params.stop)
        tokens = engine.source(self._prompt_ids, params, self.model)
        stopped = False
        try:
            for token in tokens:
                if self._cancelled:
                    self.finish_reason = "abort"
                    return
                self.completion_tokens += 1
                if token in engine.eos_ids:
                    break
                text, stopped = stops.feed(decoder.push(token))
                yield from self._take(self._parser.feed(text))
                if stopped:
                    break
                if self.completion_tokens == params.max_new_tokens:
                    self.finish_reason = "length"
                    break
        finally:
            getattr(tokens, "close", lambda: None)()  # stops the forward passes now, not at garbage collection
        if not stopped:
            text, stopped = stops.feed(decoder.flush())
            yield from self._take(self._parser.feed(text if stopped else text + stops.flush()))
        yield from self._take(self._parser.finish())
        self.finish_reason = self.finish_reason or ("tool_calls" if self._tool_calls else "stop")

    def result(self) -> ChatResult:
        """Run to the end if not yet run, and return everything it produced."""
        if not self._started:
            for _ in self:
                pass
        return ChatResult(
            reasoning="".join(self._reasoning) if self._parser.had_reasoning else None,
            content="".join(self._content),
            tool_calls=list(self._tool_calls),
            finish_reason=self.finish_reason or "abort",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )

    def _take(self, delta: Delta) -> Iterator[Delta]:
        self._reasoning.append(delta.reasoning)
        self._content.append(delta.content)
        self._tool_calls.extend(delta.tool_calls)
        if delta:
            yield delta


class Engine:
    """Prompt rendering and streaming generation over one tokenizer and a set of served models."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        models: Mapping[str, str | None],
        source: TokenSource,
        *,
        max_model_len: int,
        eos_ids: set[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.models = dict(models)  # served name -> name of the base it adapts (None for a base)
        self.source = source
        self.max_model_len = max_model_len
        self.eos_ids = eos_ids if eos_ids is not None else {tokenizer.eos_token_id}

    @property
    def names(self) -> list[str]:
        """Served model names: the base first, then the fine-tuned ones (adapters, full models)."""
        return list(self.models)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for `messages`, from the tokenizer's own chat template, ready for the answer."""
        from jinja2 import TemplateError

        kwargs = dict(template_kwargs or {})
        taken = sorted(kwargs.keys() & {"conversation", "tools", "add_generation_prompt", "tokenize"})
        if taken:
            raise UserError(f"chat template kwargs: {', '.join(taken)} cannot be set there (tuneforge sets them)")
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        try:
            return self.tokenizer.apply_chat_template(
                [m.to_template() for m in messages],
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=False,
                **kwargs,
            )
        except TemplateError as exc:
            raise UserError(f"the chat template rejected these messages: {exc}") from None

    def chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        parse_tools: bool | None = None,
        enable_thinking: bool | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        default_max_tokens: int | None = None,
    ) -> Generation:
        """Start a chat answer (model: a served name, default the last one, i.e. the fine-tuned model).

        Without `params.max_new_tokens` the answer may run to `default_max_tokens`, or to the context end if None.
        """
        prompt = self.render(messages, tools=tools, enable_thinking=enable_thinking, template_kwargs=template_kwargs)
        # Templates such as QwQ's open <think> in the prompt: the output then starts inside the reasoning.
        reasoning_open = prompt.rstrip().endswith(THINK_OPEN)
        parser = OutputParser(reasoning_open=reasoning_open, tools=bool(tools) if parse_tools is None else parse_tools)
        return self._start(prompt, params, model, parser, special_tokens=False, default_max_tokens=default_max_tokens)

    def complete(
        self,
        prompt: str,
        params: SamplingParams | None = None,
        *,
        model: str | None = None,
        default_max_tokens: int | None = None,
    ) -> Generation:
        """Start a raw text continuation of `prompt` (no template, no parsing: all output is content)."""
        parser = OutputParser(think=False)
        return self._start(prompt, params, model, parser, special_tokens=True, default_max_tokens=default_max_tokens)

    def _start(
        self,
        prompt: str,
        params: SamplingParams | None,
        model: str | None,
        parser: OutputParser,
        *,
        special_tokens: bool,
        default_max_tokens: int | None = None,
    ) -> Generation:
        model = self.names[-1] if model is None else model
        if model not in self.models:
            raise UserError(f"model '{model}' is not served here; choose one of: {', '.join(self.names)}")
        # A chat template writes its own BOS where the model has one; a raw prompt gets it from the tokenizer.
        prompt_ids = self.tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
        params = params or SamplingParams()
        if params.max_new_tokens is not None and params.max_new_tokens < 1:
            raise UserError(f"max new tokens must be at least 1 (got {params.max_new_tokens})")
        room = self.max_model_len - len(prompt_ids)
        if room <= 0 or (params.max_new_tokens or 0) > room:
            raise UserError(
                f"the prompt is {len(prompt_ids)} tokens and {params.max_new_tokens or 'at least 1'} new tokens "
                f"were asked for, but the context is {self.max_model_len} tokens (--max-model-len); "
                "shorten the conversation or ask for fewer tokens"
            )
        if params.max_new_tokens is None:
            params = replace(params, max_new_tokens=min(room, default_max_tokens or room))
        return Generation(self, model, prompt_ids, params, parser)


@dataclass
class _Weights:
    """Loaded models as a TokenSource: one forward pass at a time, LoRA adapters switched as needed."""

    targets: dict[str, tuple[Any, str | None]]  # served name -> (model, adapter name or None for the base)
    peft_model: Any = None  # the PeftModel holding the adapters, if any
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: str | None = None  # adapter active on peft_model (None: adapters disabled)

    def generate(self, prompt_ids: list[int], params: SamplingParams, name: str) -> Iterator[int]:
        """Next-token ids after `prompt_ids`, forever (the engine decides when to stop)."""
        import torch

        model, adapter = self.targets[name]
        pick = _sampler(params, model.generation_config, model.device)
        ids, cache = torch.tensor([prompt_ids], device=model.device), None
        while True:
            with torch.inference_mode():
                # The lock covers adapter choice + forward, so generations for different adapters may
                # interleave token by token (e.g. chat --compare) and never see each other's adapter.
                with self._lock:
                    self._activate(model, adapter)
                    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                token = pick(out.logits[0, -1].float())
            yield token
            ids = torch.tensor([[token]], device=model.device)

    def _activate(self, model: Any, adapter: str | None) -> None:
        if model is not self.peft_model or adapter == self._active:
            return
        if adapter is None:
            model.base_model.disable_adapter_layers()
        else:
            model.base_model.enable_adapter_layers()
            model.set_adapter(adapter, inference_mode=True)
        self._active = adapter


def _sampler(params: SamplingParams, config: GenerationConfig, device: Any) -> Callable[[torch.Tensor], int]:
    """Greedy or sampled next-token choice; unset values follow the model's generation config."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    temperature = params.temperature
    if temperature is None:
        temperature = (config.temperature or 1.0) if config.do_sample else 0.0
    # Below vLLM's sampling epsilon a temperature is greedy: dividing logits by 1e-45 overflows to inf and NaN.
    if temperature < GREEDY_BELOW:
        return lambda logits: int(logits.argmax())
    top_k = params.top_k if params.top_k is not None else config.top_k
    top_p = params.top_p if params.top_p is not None else config.top_p
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1 else []
    warpers += [TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1 else []
    generator = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)

    def pick(logits: torch.Tensor) -> int:
        scores = logits[None]
        for warp in warpers:
            scores = warp(None, scores)
        return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))

    return pick


def load_engine(spec: ModelSpec, *, max_model_len: int | None = None) -> Engine:
    """Load the spec's tokenizer, base weights, adapters and further models (on the GPU where there is one)."""
    import torch

    from tuneforge.model.load import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(spec.tokenizer)
    base = load_model(spec.model).to(device).eval()
    targets: dict[str, tuple[Any, str | None]] = {spec.name: (base, None)}
    peft_model = None
    if spec.adapters:
        from peft import PeftModel

        (first, path), *rest = spec.adapters.items()
        peft_model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
        for name, folder in rest:
            peft_model.load_adapter(str(folder), adapter_name=name)
        peft_model.eval()
        targets = {spec.name: (peft_model, None), **{name: (peft_model, name) for name in spec.adapters}}
    for name, config in spec.others.items():
        targets[name] = (load_model(config).to(device).eval(), None)

    context = base.config.get_text_config().max_position_embeddings
    if max_model_len is not None and max_model_len > context:
        raise UserError(f"--max-model-len {max_model_len}: the model's context is {context} tokens")
    eos = base.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
    models = {spec.name: None, **{name: spec.name for name in spec.adapters}, **{name: None for name in spec.others}}
    # PeftModel.from_pretrained leaves the first adapter active; _Weights must know, or the base answers with it.
    weights = _Weights(targets, peft_model, _active=next(iter(spec.adapters), None))
    return Engine(tokenizer, models, weights.generate, max_model_len=max_model_len or context, eos_ids=eos_ids)
