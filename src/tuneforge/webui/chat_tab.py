"""The Chat tab: the base and the fine-tuned model answer side by side, streamed from one batch (`chat --compare`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gradio as gr

from tuneforge.data.conversation import Message
from tuneforge.errors import UserError
from tuneforge.model.load import DEVICE_MAPS
from tuneforge.webui.i18n import t

# One loaded engine at a time (the selected run's base and fine-tuned weights); a new run replaces it.
_sessions: dict[str, Any] = {}
_lock = threading.Lock()
ONE_DEVICE = "one device"  # the Device map choice that loads everything on one GPU (or the CPU)


def session_for(run: str, device_map: str = ONE_DEVICE):
    """The ChatSession of `run` (loaded once, as `tuneforge chat --run RUN --compare [--device-map M]` loads it)."""
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.chat import open_session
    from tuneforge.model.load import DeviceMap

    placement = DeviceMap.parse(None if device_map == ONE_DEVICE else device_map, None)
    key = f"{run}\0{device_map}"
    with _lock:
        if key not in _sessions:
            _sessions.clear()  # frees the previous run's weights before loading the next
            _sessions[key] = open_session(None, None, run, SamplingParams(), device_map=placement)
        return _sessions[key]


def thinking_default(run: str | None) -> tuple[bool, str]:
    """The Thinking box for `run`: ticked as the run trained, and a note saying which mode and why."""
    from tuneforge.infer.spec import thinking_for
    from tuneforge.rundir import Run

    try:  # a folder that is not a readable run (its config invalid, say) records no mode
        opened = Run.open(run) if run else None
        trained = opened.trained_thinking() if opened else None
    except UserError:
        opened, trained = None, None
    if opened is None or trained is None:
        return False, "thinking off: the run does not record one mode it trained in"
    return trained, thinking_for(None, trained, opened.name)[1]


def view(history: list[Message], show_thinking: bool) -> list[dict[str, Any]]:
    """Chatbot messages for a conversation: reasoning, when shown, as a collapsible "thinking" message."""
    shown: list[dict[str, Any]] = []
    for message in history:
        if message.role == "assistant" and message.reasoning and show_thinking:
            shown.append({"role": "assistant", "content": message.reasoning, "metadata": {"title": "thinking"}})
        shown.append({"role": message.role, "content": message.content})
    return shown


def answer(
    run: str | None,
    prompt: str,
    system: str,
    think: bool,
    show_thinking: bool,
    max_new_tokens: float,
    temperature: float,
    top_p: float,
    histories: list[list[Message]],
    device_map: str = ONE_DEVICE,
) -> Iterator[tuple[Any, Any, Any, str]]:
    """Stream both answers to `prompt`; yields (base view, fine-tuned view, histories, message)."""
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.chat import interleave, start_compare

    if not run or not prompt.strip():
        yield gr.skip(), gr.skip(), histories, "❌ choose a finished run and type a message"
        return
    try:
        session = session_for(run, device_map)
    except UserError as exc:
        yield gr.skip(), gr.skip(), histories, f"❌ {exc}"
        return
    params = SamplingParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
    session = replace(session, params=params, think=think, system=system.strip() or None)
    generations = start_compare(session, histories, prompt)
    asked = Message("user", prompt)
    for parts in interleave(generations):
        views = [
            view([*history, asked, Message("assistant", part["content"], reasoning=part["reasoning"])], show_thinking)
            for history, part in zip(histories, parts, strict=True)
        ]
        yield views[0], views[1], histories, ""
    histories = [[*history, asked, g.result().to_message()] for history, g in zip(histories, generations, strict=True)]
    yield view(histories[0], show_thinking), view(histories[1], show_thinking), histories, ""


def build(run: gr.Dropdown) -> None:
    """The Chat tab's components and events (inside a gr.Tab)."""
    histories = gr.State([[], []])
    with gr.Row():
        system = gr.Textbox(label=t("system"), lines=2, scale=3, elem_id="chat-system")
        with gr.Column(scale=2):
            ticked, note = thinking_default(run.value)
            think = gr.Checkbox(ticked, label=t("think"), info=note, elem_id="chat-think")
            show_thinking = gr.Checkbox(True, label=t("show_thinking"), elem_id="chat-show-thinking")
        max_new_tokens = gr.Number(128, label=t("max_new_tokens"), precision=0, minimum=1, elem_id="chat-max-new")
        temperature = gr.Number(0.0, label=t("temperature"), minimum=0, elem_id="chat-temperature")
        top_p = gr.Number(1.0, label=t("top_p"), minimum=0, maximum=1, elem_id="chat-top-p")
        device_map = gr.Dropdown(
            [ONE_DEVICE, *DEVICE_MAPS], value=ONE_DEVICE, label=t("device_map"), info=t("device_map_info"),
            elem_id="chat-device-map",
        )  # fmt: skip
    with gr.Row():
        base = gr.Chatbot(label=t("base"), elem_id="chat-base", height=360)
        tuned = gr.Chatbot(label=t("tuned"), elem_id="chat-tuned", height=360)
    with gr.Row():
        prompt = gr.Textbox(label=t("prompt"), scale=5, elem_id="chat-prompt")
        send = gr.Button(t("send"), variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button(t("clear"), scale=1)
    message = gr.Markdown(elem_id="chat-message")
    inputs = [run, prompt, system, think, show_thinking, max_new_tokens, temperature, top_p, histories, device_map]
    outputs = [base, tuned, histories, message]
    send.click(answer, inputs, outputs)
    prompt.submit(answer, inputs, outputs)
    clear.click(lambda: ([], [], [[], []], ""), None, outputs)
    run.change(lambda r: gr.Checkbox(**dict(zip(("value", "info"), thinking_default(r)))), run, think)
    show_thinking.change(lambda h, s: (view(h[0], s), view(h[1], s)), [histories, show_thinking], [base, tuned])
