"""`tuneforge chat`: one answer or a multi-turn REPL, streaming, thinking shown apart from the answer.

With `--compare` the base model and the fine-tuned one answer the same prompt side by side: both generations
run in one batch (the engine's batched path, one forward pass per step for both) and stream into two columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuneforge.data.conversation import Message
from tuneforge.infer.backend import ChatResult, SamplingParams
from tuneforge.infer.engine import Engine, Generation, load_engine
from tuneforge.infer.spec import parse_adapters, resolve_spec, thinking_for

if TYPE_CHECKING:
    from rich.text import Text

    from tuneforge.model.load import DeviceMap


DEFAULT_MAX_NEW_TOKENS = 512  # `chat` without --max-new-tokens: this many, or fewer where the context has less left


@dataclass
class ChatSession:
    """An engine, the served names to talk to, and how to sample."""

    engine: Engine
    base: str
    tuned: str
    params: SamplingParams
    think: bool | None = None
    system: str | None = None
    thinking_note: str = ""  # which thinking mode `think` is, and why (the flag, the run's trained one, the template's)

    def start(self, history: list[Message], prompt: str, model: str | None = None) -> Generation:
        """The generation answering `prompt` after `history` (not yet read); history is not changed."""
        messages = ([Message("system", self.system)] if self.system else []) + history + [Message("user", prompt)]
        return self.engine.chat(
            messages,
            self.params,
            model=model or self.tuned,
            enable_thinking=self.think,
            default_max_tokens=DEFAULT_MAX_NEW_TOKENS,
        )

    def ask(
        self,
        history: list[Message],
        prompt: str,
        model: str | None = None,
        on_delta: Callable[[str, str], None] | None = None,
    ) -> ChatResult:
        """Answer `prompt` after `history` (streaming pieces to on_delta(kind, text)); history is not changed."""
        generation = self.start(history, prompt, model)
        for delta in generation:
            if on_delta:
                if delta.reasoning:
                    on_delta("reasoning", delta.reasoning)
                if delta.content:
                    on_delta("content", delta.content)
        return generation.result()


def open_session(
    model: str | None,
    adapter: str | None,
    run: str | None,
    params: SamplingParams,
    think: bool | None = None,
    system: str | None = None,
    quantize: bool | None = None,
    device_map: DeviceMap | None = None,
) -> ChatSession:
    """Load the base and the fine-tuned model (adapter or run) into one engine, in the thinking mode it trained in
    unless `think` says otherwise; `quantize` and `device_map` as resolve_spec takes them."""
    adapters = parse_adapters([f"adapter={adapter}"]) if adapter else {}
    spec = resolve_spec(
        model=model, run=run, adapters=adapters, with_base=True, quantize=quantize, device_map=device_map
    )
    engine = load_engine(spec)
    think, note = thinking_for(think, spec.thinking.get(engine.names[-1]), engine.names[-1])
    return ChatSession(engine, engine.names[0], engine.names[-1], params, think, system, note)


def print_streamed(session: ChatSession, history: list[Message], prompt: str, console) -> ChatResult:
    """Stream one answer to the console: reasoning dimmed, then the answer."""
    state = {"kind": None}

    def show(kind: str, text: str) -> None:
        if kind != state["kind"]:
            console.print("\n[dim]thinking:[/dim] " if kind == "reasoning" else "\n[bold]answer:[/bold] ", end="")
            state["kind"] = kind
        console.print(text, end="", style="dim" if kind == "reasoning" else None, markup=False, highlight=False)

    result = session.ask(history, prompt, on_delta=show)
    console.print()
    return result


def start_compare(session: ChatSession, histories: list[list[Message]], prompt: str) -> list[Generation]:
    """The base's and the fine-tuned model's generations for `prompt` (after each one's history), both in the batch."""
    names = (session.base, session.tuned)
    generations = [session.start(history, prompt, model=name) for history, name in zip(histories, names, strict=True)]
    for generation in generations:  # both join the batch before either is read
        generation.start()
    return generations


def interleave(generations: list[Generation]) -> Iterator[list[dict[str, str]]]:
    """One delta from each generation in turn (they advance together, as in the batch); yields the text so far."""
    parts = [{"reasoning": "", "content": ""} for _ in generations]
    streams = [iter(generation) for generation in generations]
    running = list(range(len(generations)))
    while running:
        for i in list(running):
            delta = next(streams[i], None)
            if delta is None:
                running.remove(i)
                continue
            parts[i]["reasoning"] += delta.reasoning
            parts[i]["content"] += delta.content
        yield parts


def print_compare(session: ChatSession, history: list[Message], prompt: str, console) -> list[ChatResult]:
    """Answer with the base and the fine-tuned model in one batch, streaming both side by side."""
    from rich.live import Live
    from rich.table import Table

    names = (session.base, session.tuned)
    generations = start_compare(session, [history, history], prompt)

    def table(parts: list[dict[str, str]]) -> Table:
        view = Table(show_lines=True, expand=True)
        for name in names:
            view.add_column(name)
        view.add_row(*(_format(part["reasoning"], part["content"]) for part in parts))
        return view

    with Live(table([{"reasoning": "", "content": ""}] * len(names)), console=console, refresh_per_second=8) as live:
        for parts in interleave(generations):
            live.update(table(parts))
    return [generation.result() for generation in generations]


def _format(reasoning: str, content: str) -> Text:
    """One column: reasoning dimmed above the answer; model text is never read as rich markup."""
    from rich.text import Text

    cell = Text(reasoning.strip(), style="dim")
    if reasoning.strip():
        cell.append("\n\n")
    return cell.append(content.strip())


def repl(session: ChatSession, console, compare: bool = False, read: Callable[[str], str] = input) -> None:
    """Multi-turn chat until /exit or end of input; /clear forgets the conversation."""
    history: list[Message] = []
    console.print(
        f"chatting with {session.tuned} ({'compare with ' + session.base if compare else 'streaming'}); "
        "/clear resets, /exit quits"
    )
    while True:
        try:
            prompt = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if prompt in ("/exit", "/quit"):
            return
        if prompt == "/clear":
            history.clear()
            continue
        if not prompt:
            continue
        if compare:
            print_compare(session, history, prompt, console)
            continue
        result = print_streamed(session, history, prompt, console)
        history += [Message("user", prompt), result.to_message()]
