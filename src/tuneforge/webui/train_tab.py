"""The Train tab: start from a preset, the essentials with the GPU verdict, folded groups, the command and YAML,
sample preview and full estimate, and launch / stop / resume (enabled only when they can act)."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import gradio as gr

from tuneforge.config import Config, check_local_files, parse_yaml, validate
from tuneforge.config_grpo import own_rewards
from tuneforge.errors import UserError
from tuneforge.estimate.report import GPU_SIZES
from tuneforge.io import atomic_write_text
from tuneforge.rundir import Run
from tuneforge.webui import jobs, pickers, schema, train_form
from tuneforge.webui.i18n import t

PREVIEW_SAMPLES = 3
REFRESH_S = 2.0
EDITOR = "YAML editor"


def config_from_yaml(text: str) -> Config:
    """The validated config in the YAML editor (every problem at once, as `tuneforge config check` reports them)."""
    cfg = validate(parse_yaml(text, EDITOR), EDITOR)
    check_local_files(cfg)
    if own := own_rewards(cfg.method.grpo):  # issue 27: the browser may not run a file's code
        key, name = own[0]
        raise UserError(
            f"{key}: {name} runs that file's code, which the web UI does not accept from the browser; "
            "start this run with `tuneforge train CONFIG` instead"
        )
    return cfg


def _ok(text: str) -> str:
    return f"✅ {text}"


def _error(exc: UserError) -> str:
    return "\n".join(f"❌ {line}  " for line in str(exc).splitlines())


def gpu_env(gpus: str) -> dict[str, str]:
    """The job's environment for the GPUs chosen (`0,1`): CUDA_VISIBLE_DEVICES, as one sets it for the CLI."""
    chosen = ",".join(part.strip() for part in (gpus or "").split(",") if part.strip())
    if chosen and not all(part.isdigit() for part in chosen.split(",")):
        raise UserError(f"GPUs: {gpus!r}: expected GPU indices separated by commas, e.g. 0,1")
    return {"CUDA_VISIBLE_DEVICES": chosen} if chosen else {}


def command_line(output_dir: str, gpus: str) -> str:
    """The exact shell command the Launch button runs (the YAML beside it is RUN/jobs/train.yaml)."""
    env = "".join(f"{k}={v} " for k, v in gpu_env(gpus).items())
    return f"{env}tuneforge train {Run(Path(output_dir).expanduser()).job_config}"


def launch(text: str, runs_dir: Path, gpus: str = "") -> tuple[str, Path]:
    """Write the editor's config to RUN/jobs/train.yaml and start `tuneforge train` on it (on the GPUs chosen)."""
    cfg = config_from_yaml(text)
    env = gpu_env(gpus)
    run = Path(cfg.output.dir).expanduser().resolve()
    if not run.is_relative_to(runs_dir.resolve()):
        raise UserError(
            f"output.dir: {cfg.output.dir} is outside the runs folder {runs_dir}; the UI watches runs there"
        )
    config = Run(run).job_config
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, text)
    state = jobs.launch(run, "train", ["train", str(config)], env=env)
    return f"training started (pid {state.pid}): {run}", run


def verdict_text(raw: dict[str, Any], size_gb: float | str) -> str:
    """The estimator's one-line verdict for the form's config on a GPU of `size_gb` GB (a number typed or picked)."""
    from tuneforge.estimate.report import gpu_verdict

    try:
        size = float(size_gb)
    except (TypeError, ValueError):
        return _error(UserError(f"GPU memory: {size_gb!r}: expected a number of GB, e.g. 24"))
    try:
        return f"**{size:g} GB**: {gpu_verdict(validate(raw, 'form'), size)}"
    except UserError as exc:
        return _error(UserError(str(exc).splitlines()[0]))


def preview_html(text: str) -> str:
    """The first samples as the trainer receives them, trained tokens marked (what `tuneforge data preview` shows)."""
    from tuneforge.data.prepare import prepare
    from tuneforge.data.preview import sides, trained_segments
    from tuneforge.model.load import load_tokenizer
    from tuneforge.objective import Objective

    cfg = config_from_yaml(text)
    tokenizer = load_tokenizer(cfg.model)
    objective = Objective.of(cfg.method)
    dataset = prepare(cfg.data, tokenizer, log=lambda *_a, **_k: None, objective=objective).train
    blocks = []
    for i in range(min(PREVIEW_SAMPLES, len(dataset))):
        for name, (ids, labels) in sides(dataset[i], objective).items():  # a pair: each answer after its prompt
            spans = "".join(
                f'<span class="{"trained" if trained else "prompt"}">{html.escape(chunk)}</span>'
                for chunk, trained in trained_segments(ids, labels, tokenizer)
            )
            title = f"sample {i}{f' {name}' if name else ''}: {len(ids)} tokens"
            blocks.append(f"<h4>{title}</h4><pre class='sample'>{spans}</pre>")
    legend = "<p><span class='trained'>trained</span> <span class='prompt'>prompt (no loss)</span></p>"
    return legend + "".join(blocks)


def estimate_text(text: str, cpu: bool) -> str:
    """The estimator's memory table, exact step count and GPU verdicts, as `tuneforge estimate CONFIG` prints them."""
    from rich.console import Console

    from tuneforge.estimate.report import config_report

    out = io.StringIO()
    config_report(config_from_yaml(text), Console(file=out, width=110, highlight=False, color_system=None), cpu)
    return out.getvalue()


def buttons(selected: str | None) -> tuple[Any, Any]:
    """Stop enabled while the selected run's training runs; Resume once it stopped, failed or was lost."""
    state = jobs.job_state(Path(selected), "train") if selected else None
    running = bool(state and state.running)
    resumable = bool(
        state and state.state in ("stopped", "failed", "lost") and Run(Path(selected)).job_config.is_file()
    )
    return gr.Button(interactive=running), gr.Button(interactive=resumable)


CSS = """
pre.sample { white-space: pre-wrap; font-size: 0.85em; max-height: 16em; overflow-y: auto; }
span.trained { background: #c8f7c5; color: #114411; }
span.prompt { color: #888; }
.tf-progress progress { width: 100%; height: 1.4em; }
"""


def build(
    runs_dir: Path, run: gr.Dropdown, models_dir: Path | None, data_dir: Path | None, examples_dir: Path | None
) -> dict[str, gr.components.Component]:
    """The Train tab (inside a gr.Tab); a launch selects the new run in `run`. Returns each config key's component."""
    default = {"output": {"dir": str(runs_dir / "my-run")}}
    values = dict(zip((f.path for f in schema.FIELDS), schema.raw_to_form(default), strict=True))
    found = pickers.presets(examples_dir, runs_dir)
    hub_ids = pickers.hub_datasets([path for label, path in found if not label.startswith("again: ")])
    with gr.Row(equal_height=True):
        preset = gr.Dropdown(found, value=None, label=t("start_from"), info=t("start_from_info"), scale=3,
                             elem_id="preset")  # fmt: skip
        name = gr.Textbox("my-run", label=t("output_name"), info=t("output_name_info"), max_lines=1, elem_id="name")
        gpu_size = gr.Dropdown(list(GPU_SIZES), value=GPU_SIZES[0], label=t("gpu_size"), allow_custom_value=True,
                               elem_id="gpu-size")  # fmt: skip
    buttons_made: list[gr.Button] = []

    def controls_column() -> None:
        with gr.Column(scale=1, min_width=160):
            buttons_made.append(gr.Button(t("launch"), variant="primary", elem_id="launch"))
            with gr.Row():
                buttons_made.append(gr.Button(t("stop"), variant="stop", elem_id="stop", interactive=False, size="sm"))
                buttons_made.append(gr.Button(t("resume"), elem_id="resume", interactive=False, size="sm"))

    models, data = pickers.model_choices(models_dir), pickers.data_choices(data_dir, hub_ids)
    top = train_form.essentials(values, models, data, controls_column)
    launch_button, stop_button, resume_button = buttons_made
    verdict = gr.Markdown(elem_id="verdict")
    message = gr.Markdown(elem_id="train-message")
    summary = gr.HTML(elem_id="dataset-info")
    gpus: list[gr.Textbox] = []  # not a config key: the job's CUDA_VISIBLE_DEVICES, shown with the distributed keys
    more = {"group_distributed": lambda: gpus.append(
        gr.Textbox("", label=t("gpus"), info=t("gpus_info"), max_lines=1, elem_id="gpus")
    )}  # fmt: skip
    rest = train_form.folded(values, more)
    fields = {f.path: {**top, **rest}[f.path] for f in schema.FIELDS}
    form = list(fields.values())
    gpus = gpus[0]
    with gr.Row():
        command = gr.Code(command_line(str(runs_dir / "my-run"), ""), language="shell", label=t("command"),
                          interactive=False, elem_id="command")  # fmt: skip
    editor = gr.Code(
        value=schema.dump_yaml(default), language="yaml", label=t("yaml"), interactive=True, elem_id="yaml"
    )
    with gr.Row():
        preview_button = gr.Button(t("preview"), elem_id="preview")
        estimate_button = gr.Button(t("estimate"), elem_id="estimate")
        cpu = gr.Checkbox(False, label=t("estimate_cpu"))
    estimate_box = gr.Textbox(label=t("estimate"), lines=12, max_lines=30, elem_id="estimate-text")
    preview_box = gr.HTML(elem_id="preview-html")

    def shown(raw: dict[str, Any], gpu_list: str) -> list[Any]:
        """The YAML and the command of a config mapping."""
        try:
            line = command_line((raw.get("output") or {}).get("dir", ""), gpu_list)
        except UserError as exc:
            line = str(exc)
        return [schema.dump_yaml(raw), line]

    views = [editor, command]

    def form_changed(gpu_list: str, *values: Any) -> list[Any]:
        try:
            return [*shown(schema.form_to_raw(list(values)), gpu_list), ""]
        except UserError as exc:
            return [*(gr.skip() for _ in views), _error(exc)]

    def load(raw: dict[str, Any], gpu_list: str) -> list[Any]:
        out = (raw.get("output") or {}).get("dir", "")
        return [*schema.raw_to_form(raw), Path(out).name, *shown(raw, gpu_list), ""]

    def editor_changed(text: str, gpu_list: str) -> list[Any]:
        try:
            return load(parse_yaml(text, EDITOR), gpu_list)
        except UserError as exc:
            return [*(gr.skip() for _ in [*form, name, *views]), _error(exc)]

    def preset_chosen(path: str | None, gpu_list: str) -> list[Any]:
        if not path:
            return [gr.skip() for _ in [*form, name, *views, message]]
        try:
            return load(pickers.preset_config(path, runs_dir), gpu_list)
        except UserError as exc:
            return [*(gr.skip() for _ in [*form, name, *views]), _error(exc)]

    def details(size: float, *values: Any) -> list[Any]:
        """The GPU verdict and the first dataset's summary (slower: reads the model's config and the data)."""
        try:
            raw = schema.form_to_raw(list(values))
        except UserError:
            return [gr.skip(), gr.skip()]  # form_changed reports it
        try:
            info = pickers.dataset_summary(raw)
        except UserError as exc:
            info = f"<p>{html.escape(str(exc))}</p>"
        return [verdict_text(raw, size), info]

    # A form edit (`input`: the user's, never an update) rewrites the YAML. Edits are handled one at a time, in order
    # (one concurrency group): run side by side, an older edit's YAML could arrive last and undo a newer one. The YAML
    # is read back into the form when the user leaves the editor: gr.Code fires `input` on updates too, so stale text
    # would echo back over newer form values. The verdict and the dataset's summary follow, in a group of their own.
    sync = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id="form-sync", concurrency_limit=1)
    then = dict(fn=details, inputs=[gpu_size, *form], outputs=[verdict, summary], show_progress="hidden",
                concurrency_id="details", concurrency_limit=1)  # fmt: skip
    for part in [*form, gpus]:
        part.input(form_changed, [gpus, *form], [*views, message], **sync).then(**then)
    gpu_size.input(**then, trigger_mode="always_last")
    name.input(lambda n: str(runs_dir / n.strip()), name, fields["output.dir"], **sync).then(
        form_changed, [gpus, *form], [*views, message], **sync
    )
    editor.blur(editor_changed, [editor, gpus], [*form, name, *views, message], **sync).then(**then)
    preset.input(preset_chosen, [preset, gpus], [*form, name, *views, message], **sync).then(**then)

    def start(text: str, gpu_list: str) -> list[Any]:
        try:
            note, path = launch(text, runs_dir, gpu_list)
        except UserError as exc:
            return [_error(exc), gr.skip(), gr.skip(), gr.skip()]
        choices = [(p.name, str(p)) for p in jobs.list_runs(runs_dir)]
        return [_ok(note), gr.Dropdown(choices=choices, value=str(path)), *buttons(str(path))]

    def control(selected: str | None, resume: bool) -> list[Any]:
        try:
            if not selected:
                raise UserError("choose a run in the Run list first")
            path = Path(selected)
            if resume:
                state = jobs.launch(path, "train", jobs.train_args(path, resume=True))
                note = _ok(f"resumed (pid {state.pid}): {path}")
            else:
                jobs.stop(path, "train")
                note = _ok(f"stop sent to {path}: it saves a checkpoint after the current step, then exits")
        except UserError as exc:
            note = _error(exc)
        return [note, *buttons(selected)]

    def guarded(fn, *args: Any) -> str:
        try:
            return fn(*args)
        except UserError as exc:
            return _error(exc)

    controls = [stop_button, resume_button]
    launch_button.click(start, [editor, gpus], [message, run, *controls])
    stop_button.click(lambda r: control(r, resume=False), run, [message, *controls])
    resume_button.click(lambda r: control(r, resume=True), run, [message, *controls])
    preview_button.click(lambda text: guarded(preview_html, text), editor, preview_box)
    estimate_button.click(lambda text, c: guarded(estimate_text, text, c), [editor, cpu], estimate_box)
    gr.Timer(REFRESH_S).tick(buttons, run, controls, show_progress="hidden")
    run.change(buttons, run, controls, show_progress="hidden")
    return fields
