"""The web UI's page: a run list above the Train, Watch, Compare, Chat, Evaluate, Export and Data tabs; launching it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import gradio as gr

from tuneforge.errors import UserError
from tuneforge.webui import chat_tab, compare_tab, data_tab, jobs, tools_tab, train_tab, watch_tab
from tuneforge.webui.i18n import I18N, t

RUNS_REFRESH_S = 5.0


def build_app(
    runs_dir: Path, models_dir: Path | None = None, data_dir: Path | None = None, examples_dir: Path | None = None
) -> tuple[gr.Blocks, dict[str, gr.components.Component]]:
    """The page, and the form component of every config key (the schema test walks it). The pickers list the model
    folders under `models_dir`, the data files under `data_dir` and the presets in `examples_dir`."""
    runs_dir = runs_dir.resolve()

    def choices() -> list[tuple[str, str]]:
        return [(p.name, str(p)) for p in jobs.list_runs(runs_dir)]

    with gr.Blocks(title="tuneforge") as page:
        with gr.Row(equal_height=True):
            gr.Markdown(f"**tuneforge** · `{runs_dir}`", elem_id="title")
            found = choices()
            run = gr.Dropdown(found, value=found[0][1] if found else None, label=t("run"), elem_id="run", scale=2,
                              container=False)  # fmt: skip
        with gr.Tabs():
            with gr.Tab(t("tab_train"), id="train"):
                fields = train_tab.build(runs_dir, run, models_dir, data_dir, examples_dir)
            with gr.Tab(t("tab_watch"), id="watch"):
                watch_tab.build(run)
            with gr.Tab(t("tab_compare"), id="compare"):
                compare_tab.build(runs_dir)
            with gr.Tab(t("tab_chat"), id="chat"):
                chat_tab.build(run)
            with gr.Tab(t("tab_eval"), id="eval"):
                tools_tab.build_eval(run)
            with gr.Tab(t("tab_export"), id="export"):
                tools_tab.build_export(run)
            with gr.Tab(t("tab_data"), id="data"):
                data_tab.build(runs_dir)
        # New runs (launched elsewhere too: another UI, the CLI) join the list; the selection stays.
        gr.Timer(RUNS_REFRESH_S).tick(lambda: gr.Dropdown(choices=choices()), None, run, show_progress="hidden")
    # The page is the only client: no event is an API endpoint. Gradio 6.31 also embeds the API description (every
    # endpoint with its defaults, the runs folder among them) in the login page it shows before authentication
    # (routes.py, main); private endpoints are left out of it. Keep this even once that is fixed.
    for fn in page.fns.values():
        fn.api_visibility = "private"
    return page, fields


def credentials(auth: str | None, token_file: Path | None) -> tuple[str, str] | None:
    """USER:PASS from --auth or from the first line of --token-file (kept out of `ps`); None without either."""
    if auth and token_file:
        raise UserError("webui: pass --auth USER:PASS or --token-file FILE, not both")
    flag = "--auth"
    if token_file is not None:
        if not token_file.is_file():
            raise UserError(f"--token-file {token_file}: not found; write USER:PASS into it")
        auth, flag = (
            token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip(),
            f"--token-file {token_file}",
        )
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UserError(f"{flag}: expected USER:PASS (both non-empty)")
    return user, password


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def serve(
    host: str, port: int, runs_dir: Path, auth: tuple[str, str] | None, warn=print, **pickers: Path | None
) -> None:
    """Serve the UI until interrupted; jobs it started keep running after it exits. `pickers`: build_app's folders."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not is_loopback(host) and auth is None:
        warn(
            f"warning: the web UI listens on {host} without authentication: anyone who can reach port {port} can "
            "launch jobs and read your runs; pass --auth USER:PASS or --token-file FILE"
        )
    page, _ = build_app(runs_dir, **pickers)
    page.queue(default_concurrency_limit=4)
    page.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        i18n=I18N,
        css=train_tab.CSS,
        allowed_paths=[str(runs_dir.resolve())],  # eval charts are shown from the run folders
        footer_links=["settings"],
        show_error=True,
        quiet=True,
    )
