"""The inference engine behind `tuneforge chat` and `tuneforge serve`.

It renders prompts with the tokenizer's own chat template (DESIGN.md invariant 1, so inference sees exactly
what training rendered), generates token by token with a KV cache, decodes incrementally and splits the
text into reasoning, answer and tool calls as it streams (infer/parse.py).

Tokens come from a `TokenSource`: `load_engine` builds one over real weights (a base, LoRA adapters on it
switched per forward pass, further full models; infer/batcher.py); tests pass a scripted one to force exact
outputs. The engine itself owns everything after the token: eos, max tokens, stop strings, decoding, parsing, counts.

    engine = load_engine(resolve_spec(run="runs/mybot"))
    gen = engine.chat([Message("user", "Who are you?")], SamplingParams(temperature=0), enable_thinking=True)
    for delta in gen:
        print(delta.reasoning or delta.content, end="")
    gen.result().finish_reason
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tuneforge.data.conversation import Message, ToolCall
from tuneforge.errors import UserError
from tuneforge.infer.backend import ChatResult, SamplingParams, model_per_item
from tuneforge.infer.batcher import Batcher, batched
from tuneforge.infer.parse import Delta, OutputParser, StopMatcher, parser_after

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tuneforge.infer.spec import ModelSpec
    from tuneforge.infer.structured import Constraint, Grammars

# (prompt token ids, sampling params, served model name) -> next-token ids (it may end at eos or max tokens).
# A source that can constrain its tokens also takes a `constraint` keyword (infer/structured.py): the engine
# passes one only for a request with a response_format, and only when it was built with `grammars`.
TokenSource = Callable[..., Iterator[int]]
# ([(prompt ids, continuation ids), ...], served model name) -> log-probability of each continuation token.
Scorer = Callable[[list[tuple[list[int], list[int]]], str], list[list[float]]]
# ([prompt ids, ...], candidate token ids, served model name) -> log-probability of each candidate as the next token.
NextScorer = Callable[[list[list[int]], list[int], str], list[list[float]]]


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
        self,
        engine: Engine,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        parser: OutputParser,
        constraint: Constraint | None = None,
    ) -> None:
        self.model = model
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._engine, self._prompt_ids, self._params, self._parser = engine, prompt_ids, params, parser
        self._constraint = constraint
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._started = self._cancelled = False
        self._tokens: Iterator[int] | None = None

    def start(self) -> None:
        """Hand the prompt to the token source now (generate_batch starts a whole batch before reading any)."""
        if self._tokens is None:
            extra = {"constraint": self._constraint} if self._constraint is not None else {}
            self._tokens = self._engine.source(self._prompt_ids, self._params, self.model, **extra)

    def cancel(self) -> None:
        """Stop before the next token (safe from another thread); the model is free at once."""
        self._cancelled = True

    def __iter__(self) -> Iterator[Delta]:
        if self._started:
            raise RuntimeError("a Generation runs once; call engine.chat again for another")
        self._started = True
        engine, params = self._engine, self._params
        decoder, stops = IncrementalDecoder(engine.tokenizer), StopMatcher(params.stop)
        self.start()
        tokens = self._tokens
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
        scorer: Scorer | None = None,
        next_scorer: NextScorer | None = None,
        grammars: Grammars | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.grammars = grammars  # None: the source cannot constrain tokens, so a response_format is refused
        self.models = dict(models)  # served name -> name of the base it adapts (None for a base)
        self.source = source
        self.scorer = scorer
        self.next_scorer = next_scorer
        self.max_model_len = max_model_len
        self.eos_ids = eos_ids if eos_ids is not None else {tokenizer.eos_token_id}

    @property
    def names(self) -> list[str]:
        """Served model names: the base first, then the fine-tuned ones (adapters, full models)."""
        return list(self.models)

    @property
    def can_score(self) -> bool:
        """Whether there are weights to score with (a scripted token source has none)."""
        return self.scorer is not None and self.next_scorer is not None

    def close(self) -> None:
        """Nothing to stop: the batcher's thread ends when idle, and the weights go with the engine."""

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
        parser = parser_after(prompt, tools=bool(tools) if parse_tools is None else parse_tools)
        return self._start(
            prompt, params, model, parser, special_tokens=False, default_max_tokens=default_max_tokens, chat=True
        )

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

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        model: str | Sequence[str] | None = None,
        enable_thinking: bool | None = None,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
    ) -> list[ChatResult]:
        """Answer many conversations in batches (model: one served name, or one per conversation); input order.

        Batches hold prompts of similar length (sorted, so one long prompt does not pad a whole batch), at most
        `max_batch_size` of them and `max_batch_tokens` padded prompt + new tokens; on CUDA out-of-memory a
        batch is halved and retried.
        """
        names = model_per_item(model, len(conversations))
        if len(names) != len(conversations):
            raise UserError(f"generate_batch: {len(names)} model names for {len(conversations)} conversations")

        def chat(i: int) -> Generation:
            return self.chat(conversations[i], params, model=names[i], enable_thinking=enable_thinking)

        unused = dict(enumerate(map(chat, range(len(conversations)))))  # rendered once, to size the batches too

        def run(batch: list[int]) -> list[ChatResult]:
            # A Generation runs once: a batch retried after out-of-memory renders its conversations anew.
            generations = [unused.pop(i, None) or chat(i) for i in batch]
            for generation in generations:  # all rows join the batch before any is read
                generation.start()
            return [generation.result() for generation in generations]

        sizes = [g.prompt_tokens + (g._params.max_new_tokens or 0) for g in unused.values()]
        return batched(sizes, run, max_batch_size, max_batch_tokens)

    def score(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        *,
        model: str | None = None,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
    ) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after its raw-text prompt (batched as generate_batch)."""
        if len(prompts) != len(continuations):
            raise UserError(f"score: {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [
            (self.tokenizer(prompt)["input_ids"], self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
            for prompt, continuation in zip(prompts, continuations)
        ]
        return self.score_ids(pairs, model=model, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)

    def score_ids(
        self,
        pairs: Sequence[tuple[list[int], list[int]]],
        *,
        model: str | None = None,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
    ) -> list[list[float]]:
        """As `score`, on token ids: for text tokenized as training does (eval's held-out loss uses it)."""
        model = self._scoring_model(model, self.scorer)
        for i, (prompt, continuation) in enumerate(pairs):
            if not prompt or not continuation or len(prompt) + len(continuation) > self.max_model_len:
                raise UserError(
                    f"score: pair {i} has {len(prompt)} prompt and {len(continuation)} continuation tokens; both "
                    f"must be non-empty and together fit the context of {self.max_model_len} tokens"
                )
        sizes = [len(p) + len(c) for p, c in pairs]
        return batched(
            sizes, lambda batch: self.scorer([pairs[i] for i in batch], model), max_batch_size, max_batch_tokens
        )

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        candidates: Sequence[str],
        *,
        model: str | None = None,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
    ) -> list[list[float]]:
        """Log-probability of each one-token candidate right after each raw-text prompt: one forward per prompt.

        Equal to `score(prompt, candidate)` for every candidate (multiple choice reads all letters at once).
        """
        model = self._scoring_model(model, self.next_scorer)
        token_ids = []
        for candidate in candidates:
            ids = self.tokenizer(candidate, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise UserError(f"next-token candidate {candidate!r} is {len(ids)} tokens; each must be one token")
            token_ids.append(ids[0])
        prompt_ids = [self.tokenizer(prompt)["input_ids"] for prompt in prompts]
        for i, ids in enumerate(prompt_ids):
            if not ids or len(ids) >= self.max_model_len:
                raise UserError(
                    f"next-token scoring: prompt {i} has {len(ids)} tokens; it must be non-empty and leave room for "
                    f"one more in the context of {self.max_model_len} tokens"
                )

        def run(batch: list[int]) -> list[list[float]]:
            return self.next_scorer([prompt_ids[i] for i in batch], token_ids, model)

        return batched([len(ids) for ids in prompt_ids], run, max_batch_size, max_batch_tokens)

    def _scoring_model(self, model: str | None, scorer: Callable | None) -> str:
        """The served name to score with (default: the fine-tuned one), once it and the scorer are known to exist."""
        model = self.names[-1] if model is None else model
        if model not in self.models:
            raise UserError(f"model '{model}' is not served here; choose one of: {', '.join(self.names)}")
        if scorer is None:
            raise UserError("this engine has no model weights to score with (its tokens come from a script)")
        return model

    def _start(
        self,
        prompt: str,
        params: SamplingParams | None,
        model: str | None,
        parser: OutputParser,
        *,
        special_tokens: bool,
        default_max_tokens: int | None = None,
        chat: bool = False,
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
        constraint = None
        if params.response_format is not None:
            if self.grammars is None:
                raise UserError("response_format: this engine cannot constrain its output (no model weights)")
            constraint = self.grammars.constraint(params.response_format, prompt if chat else None)
        return Generation(self, model, prompt_ids, params, parser, constraint)


def load_engine(spec: ModelSpec, *, max_model_len: int | None = None, max_batch_size: int = 32) -> Engine:
    """Load the spec's tokenizer, base weights, adapters and further models (on the GPU where there is one).

    Up to `max_batch_size` generations per set of weights run together; more wait for a place.
    """
    import torch

    from tuneforge.infer.cpu_head import pack_cpu_head
    from tuneforge.infer.structured import Grammars
    from tuneforge.model.load import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(spec.tokenizer)

    def placed(model: PreTrainedModel) -> PreTrainedModel:
        # A device map already put every layer where it runs (over several GPUs); else the whole model goes to one.
        return pack_cpu_head((model if spec.device_map else model.to(device)).eval())

    base = placed(load_model(spec.model, spec.quantize, device_map=spec.device_map))
    targets: dict[str, tuple[Any, str | None]] = {spec.name: (base, None)}
    if spec.adapters:
        from peft import PeftModel

        (first, path), *rest = spec.adapters.items()
        peft_model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
        for name, folder in rest:
            peft_model.load_adapter(str(folder), adapter_name=name)
        peft_model.eval()
        targets = {spec.name: (peft_model, None), **{name: (peft_model, name) for name in spec.adapters}}
    for name, config in spec.others.items():
        targets[name] = (placed(load_model(config, device_map=spec.device_map)), None)

    context = base.config.get_text_config().max_position_embeddings
    if max_model_len is not None and max_model_len > context:
        raise UserError(f"--max-model-len {max_model_len}: the model's context is {context} tokens")
    eos = base.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
    models = {spec.name: None, **{name: spec.name for name in spec.adapters}, **{name: None for name in spec.others}}
    batcher = Batcher(targets, eos_ids, max_batch_size)
    vocab_size = base.config.get_text_config().vocab_size
    return Engine(
        tokenizer,
        models,
        batcher.generate,
        max_model_len=max_model_len or context,
        eos_ids=eos_ids,
        scorer=batcher.score,
        next_scorer=batcher.next_token,
        grammars=Grammars(tokenizer, vocab_size, eos_ids),
    )
