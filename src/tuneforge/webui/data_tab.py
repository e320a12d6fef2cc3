"""The Data tab: a `tuneforge synth` job from the essentials (documents, endpoint, model, key by name, output), its
progress and counts, then review: browse the pairs, edit, accept or reject each, export the accepted ones.

A synth job is a job like training's (jobs.py): RUN/jobs/synth.json, synth.log and synth.yaml (the config the form
wrote; the API key never appears in it or on the command line, only the name of its variable or file) in its output
folder under RUNS/synth/, so it survives a UI restart and a new UI lists it again. The review is synth/review.py's.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from tuneforge.errors import UserError
from tuneforge.io import atomic_write_text
from tuneforge.rundir import Run
from tuneforge.synth import review
from tuneforge.synth.config import validate_synth
from tuneforge.webui import jobs
from tuneforge.webui.i18n import t

REFRESH_S = 2.0
SHOWN_CHARS = 120  # of a question or an answer in the pairs table
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def synth_root(runs_dir: Path) -> Path:
    """Where the Data tab's synth outputs live (RUNS/synth/NAME/): beside the runs, not in the run list."""
    return runs_dir / "synth"


def job_config(out: Path) -> Path:
    """The synth config the Data tab wrote for the job in `out`."""
    return Run(out).jobs / "synth.yaml"


def list_jobs(runs_dir: Path) -> list[Path]:
    """Synth output folders with a Data tab job, newest first."""
    root = synth_root(runs_dir)
    found = [p for p in root.iterdir() if Run(p).job_status("synth").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def synth_config(
    runs_dir: Path,
    docs: str,
    endpoint: str,
    model: str,
    key_env: str,
    key_file: str,
    name: str,
    questions: float | None,
) -> dict[str, Any]:
    """The synth config mapping of the form (validated by synth's own schema); the key only by name."""
    raw: dict[str, Any] = {
        "docs": docs.strip(),
        "out": str(synth_root(runs_dir).resolve() / name.strip()),
        "model": {"endpoint": endpoint.strip(), "name": model.strip()},
    }
    if not name.strip() or Path(name.strip()).name != name.strip():
        raise UserError(f"output name: {name!r}: one folder name, e.g. manuals-data")
    if key_env.strip():
        if not _ENV_NAME.match(key_env.strip()) or not os.environ.get(key_env.strip()):
            raise UserError(
                f"API key variable: {key_env.strip()!r} is not a variable set in the web UI's environment; type the "
                "variable's name (e.g. OPENAI_API_KEY), never the key, and export it before starting the UI"
            )
        raw["model"]["api_key_env"] = key_env.strip()
    if key_file.strip():
        if not Path(key_file.strip()).expanduser().is_file():
            raise UserError(f"API key file: {key_file.strip()}: not found")
        raw["model"]["api_key_file"] = key_file.strip()
    if questions:
        raw["generate"] = {"questions_per_chunk": int(questions)}
    validate_synth(raw, "Data tab")
    return raw


def start(raw: dict[str, Any]) -> tuple[str, Path]:
    """Write OUT/jobs/synth.yaml and start `tuneforge synth` on it (a re-run continues from the journal)."""
    out = Path(raw["out"])
    config = job_config(out)
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    state = jobs.launch(out, "synth", ["synth", str(config)])
    return f"synth started (pid {state.pid}): {out}", out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # written atomically: whole or absent
    except FileNotFoundError:
        return None


def progress_html(out: Path) -> str:
    """The job's state and, while it generates, a bar of requests done against those planned (OUT/progress.json)."""
    state = jobs.job_state(out, "synth")
    line = f"<b>{html.escape(out.name)}</b> · synth: {state.state}"
    if state.exit_code is not None:
        line += f", exit status {state.exit_code}"
    progress = _read(out / "progress.json")
    if not progress:
        return f"<p>{line}</p>"
    done, planned = progress.get("requests_done", 0), progress["requests_planned"]
    if progress["stage"] == "done":
        planned = done  # the plan counted no failure, duplicate or retry: the bar ends full
    line += (
        f" · {progress['stage']} · requests {done} / {planned} ({progress.get('from_journal', 0)} from the journal)"
        f" · {progress['elapsed_s']:.0f} s"
    )
    return (
        f"<div class='tf-progress'><progress value='{min(done, planned)}' max='{max(planned, 1)}'></progress>"
        f"<span>{line}</span></div>"
    )


def counts_markdown(out: Path) -> str:
    """What the run made: report.json's accounting once written, else the progress file's counts; then the review."""
    report = _read(out / "report.json")
    lines = []
    if report and not jobs.job_state(out, "synth").running:
        written, failed, filtered = report["written"], report["failed"], report["filtered"]
        lines.append(
            f"documents **{report['documents']['found']}** · chunks **{report['chunks']}** · requested "
            f"**{report['requested']}** · written **{written['total']}** (train {written['train']}, eval "
            f"{written['eval']}) · failed **{failed['total']}** · filtered **{filtered['total']}**"
        )
        for reason, count in {**failed["by_reason"], **filtered["by_reason"]}.items():
            lines.append(f"- {count} × {reason}")
        lines.append(f"tokens in {report['tokens']['in']}, out {report['tokens']['out']}")
    elif progress := _read(out / "progress.json"):
        lines.append(
            f"documents **{progress['documents']}** · chunks **{progress['chunks']}** · pairs requested "
            f"**{progress['pairs_requested']}** · tokens in {progress.get('tokens_in', 0)}, out "
            f"{progress.get('tokens_out', 0)}"
        )
    if (out / "train.jsonl").is_file() and not jobs.job_state(out, "synth").running:
        items = review.load(out)
        seen = {status: sum(item.status == status for item in items) for status in review.STATUSES}
        lines.append(
            f"review: **{seen['accepted']}** accepted · **{seen['rejected']}** rejected · **{seen['pending']}** "
            f"pending · {sum(item.edited for item in items)} edited"
        )
    return "\n\n".join(lines)


def pairs_table(out: Path) -> list[list[Any]]:
    """One row per pair of OUT/train.jsonl: number, status, question, answer (shortened)."""
    return [
        [n, item.status + (" (edited)" if item.edited else ""), item.question[:SHOWN_CHARS], item.answer[:SHOWN_CHARS]]
        for n, item in enumerate(review.load(out), 1)
    ]


def reviewable(selected: str | None) -> Path | None:
    """The selected job's folder once its dataset exists and no synth job writes it."""
    if not selected:
        return None
    out = Path(selected)
    return out if (out / "train.jsonl").is_file() and not jobs.job_state(out, "synth").running else None


def _elem(key: str) -> str:
    return "data-" + key.replace(".", "-").replace("_", "-")


def _field(key: str, **shown: Any) -> gr.Textbox:
    """A text field of the synth config key `key`, its YAML key as the hint (as the Train tab's essentials)."""
    return gr.Textbox(label=t(f"synth:{key}"), info=key, max_lines=1, elem_id=_elem(key), **shown)


def build(runs_dir: Path) -> None:
    """The Data tab (inside a gr.Tab)."""

    def choices() -> list[tuple[str, str]]:
        return [(p.name, str(p)) for p in list_jobs(runs_dir)]

    with gr.Row():
        docs = _field("docs")
        endpoint = _field("model.endpoint", placeholder="http://localhost:8000")
        model = _field("model.name")
    with gr.Row():
        key_env = _field("model.api_key_env", placeholder="OPENAI_API_KEY")
        key_file = _field("model.api_key_file")
        name = gr.Textbox("synth-data", label=t("output_name"), info=f"{synth_root(runs_dir)}/…", max_lines=1,
                          elem_id="data-name")  # fmt: skip
        questions = gr.Number(0, label=t("synth:generate.questions_per_chunk"), info="generate.questions_per_chunk",
                              precision=0, minimum=0, elem_id="data-questions")  # fmt: skip
    with gr.Row(equal_height=True):
        found = choices()
        job = gr.Dropdown(found, value=found[0][1] if found else None, label=t("synth_job"), scale=3,
                          elem_id="data-job")  # fmt: skip
        start_button = gr.Button(t("synth_start"), variant="primary", elem_id="data-start")
        stop_button = gr.Button(t("stop"), variant="stop", elem_id="data-stop")
    message = gr.Markdown(elem_id="data-message")
    bar = gr.HTML(elem_id="data-progress")
    counts = gr.Markdown(elem_id="data-counts")
    log = gr.Textbox(label=t("log"), lines=6, max_lines=6, autoscroll=True, elem_id="data-log")

    # Gradio 6.31 shows a Dataframe's headers as given (no translation), as the Evaluate tab's report table.
    table = gr.Dataframe(headers=["#", "status", "question", "answer"],
                         label=t("synth_pairs"), interactive=False, wrap=True, max_height=300,
                         elem_id="data-pairs")  # fmt: skip
    with gr.Row(equal_height=True):
        previous = gr.Button("◀", size="sm", elem_id="data-previous")
        number = gr.Number(1, label=t("synth_pair"), precision=0, minimum=1, elem_id="data-pair")
        following = gr.Button("▶", size="sm", elem_id="data-next")
        status = gr.Markdown(elem_id="data-pair-status")
    shown_id = gr.State("")  # the id of the pair in the editor: a re-run may reorder train.jsonl meanwhile
    question = gr.Textbox(label=t("synth_question"), lines=2, elem_id="data-question")
    reasoning = gr.Textbox(label=t("synth_reasoning"), lines=2, interactive=False, elem_id="data-reasoning")
    answer = gr.Textbox(label=t("synth_answer"), lines=4, elem_id="data-answer")
    with gr.Row():
        accept = gr.Button(t("synth_accept"), variant="primary", elem_id="data-accept")
        reject = gr.Button(t("synth_reject"), variant="stop", elem_id="data-reject")
        accept_rest = gr.Button(t("synth_accept_rest"), elem_id="data-accept-rest")
        export = gr.Button(t("synth_export"), elem_id="data-export")
    review_message = gr.Markdown(elem_id="data-review-message")

    def launch(*values: Any) -> list[Any]:
        try:
            note, out = start(synth_config(runs_dir, *values))
        except UserError as exc:
            return [f"❌ {exc}", gr.skip()]
        return [f"✅ {note}", gr.Dropdown(choices=choices(), value=str(out))]

    def stop(selected: str | None) -> str:
        try:
            if not selected:
                raise UserError("choose a synth job first")
            jobs.stop(Path(selected), "synth")
        except UserError as exc:
            return f"❌ {exc}"
        return "✅ stop sent: run Start again to continue from the journal"

    def pair(selected: str | None, n: float | None) -> list[Any]:
        """The editor's fields for pair `n` of the selected job (empty while there is nothing to review)."""
        out = reviewable(selected)
        items = review.load(out) if out else []
        if not items:
            return ["", "", "", "", "", 1]
        index = min(max(int(n or 1), 1), len(items))
        item = items[index - 1]
        note = f"**{item.status}**" + (" · edited" if item.edited else "") + f" · pair {index} / {len(items)}"
        return [item.id, item.question, item.reasoning or "", item.answer, note, index]

    def overview(selected: str | None) -> list[Any]:
        out = reviewable(selected)
        return [pairs_table(out) if out else [], counts_markdown(Path(selected)) if selected else ""]

    editor = [shown_id, question, reasoning, answer, status, number]

    def act(selected: str | None, key: str, n: float, q: str, a: str, verdict: str) -> list[Any]:
        out = reviewable(selected)
        try:
            if out is None or not key:
                raise UserError("no pair to review: wait for the synth job to finish")
            review.decide(out, key, verdict, q, a)
        except UserError as exc:
            return [f"❌ {exc}", *overview(selected), *pair(selected, n)]
        return [f"✅ pair {int(n)}: {verdict}", *overview(selected), *pair(selected, int(n) + 1)]

    def rest(selected: str | None, n: float) -> list[Any]:
        out = reviewable(selected)
        note = f"✅ accepted {review.accept_rest(out)} pending pairs" if out else "❌ nothing to review yet"
        return [note, *overview(selected), *pair(selected, n)]

    def write(selected: str | None) -> str:
        out = reviewable(selected)
        if out is None:
            return "❌ nothing to export yet"
        path, count = review.export(out)
        return f"✅ {count} accepted pairs written to `{path}`; train on it with `data.datasets: [{{path: {path}}}]`"

    def refresh(selected: str | None, loaded: str) -> list[Any]:
        if not selected:
            return [gr.Dropdown(choices=choices()), "", "", "", gr.skip(), gr.skip(), *(gr.skip() for _ in editor)]
        out = Path(selected)
        head = [gr.Dropdown(choices=choices()), progress_html(out), jobs.log_tail(out, "synth", 12)]
        dataset = out / "train.jsonl"
        # The table and editor follow the dataset: reloaded when it is (re)written, kept while the user reviews.
        stamp = f"{dataset.stat().st_mtime_ns}" if reviewable(selected) else ""
        if stamp == loaded:
            return [*head, counts_markdown(out), gr.skip(), gr.skip(), *(gr.skip() for _ in editor)]
        return [*head, counts_markdown(out), pairs_table(out) if stamp else [], stamp, *pair(selected, 1)]

    loaded = gr.State("")
    form = [docs, endpoint, model, key_env, key_file, name, questions]
    start_button.click(launch, form, [message, job])
    stop_button.click(stop, job, message)
    outputs = [review_message, table, counts, *editor]
    accept.click(lambda s, k, n, q, a: act(s, k, n, q, a, "accepted"), [job, shown_id, number, question, answer],
                 outputs)  # fmt: skip
    reject.click(lambda s, k, n, q, a: act(s, k, n, q, a, "rejected"), [job, shown_id, number, question, answer],
                 outputs)  # fmt: skip
    accept_rest.click(rest, [job, number], outputs)
    export.click(write, job, review_message)
    previous.click(lambda s, n: pair(s, (n or 1) - 1), [job, number], editor)
    following.click(lambda s, n: pair(s, (n or 1) + 1), [job, number], editor)
    number.submit(pair, [job, number], editor)

    def picked(selected: str | None, event: gr.SelectData) -> list[Any]:
        return pair(selected, event.index[0] + 1)

    table.select(picked, job, editor)
    watched = [job, bar, log, counts, table, loaded, *editor]
    gr.Timer(REFRESH_S).tick(refresh, [job, loaded], watched, show_progress="hidden")
    job.change(lambda s: refresh(s, "-"), job, watched, show_progress="hidden")
