"""The Train tab: the generated config form beside its YAML, sample preview, estimate, and launch / stop / resume."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import gradio as gr

from tuneforge.config import Config, check_local_files, validate
from tuneforge.config_grpo import own_rewards
from tuneforge.errors import UserError
from tuneforge.io import atomic_write_text
from tuneforge.webui import jobs, schema
from tuneforge.webui.i18n import t

# What the model and dataset pickers list: folders, and files in the formats data/sources.py reads.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
PREVIEW_SAMPLES = 3


def elem_id(path: str) -> str:
    """The HTML id of a config key's component: `data.datasets[0].path` → `cfg-data-datasets-0-path`."""
    return "cfg-" + path.replace("[", "-").replace("]", "").replace(".", "-")


def _component(field: schema.Field, value: Any) -> gr.components.Component:
    """The form component for one config key: its path as label, its description as help."""
    common = dict(label=field.path, info=field.description, elem_id=elem_id(field.path), interactive=True)
    if field.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=value, **common)
    if field.kind == "number":
        return gr.Number(value=value, precision=0 if field.integer else None, **common)
    hint = "(required)" if field.required else ("YAML value, empty: default" if field.kind == "yaml" else "")
    return gr.Textbox(value=value, placeholder=hint, max_lines=1, **common)


def config_from_yaml(text: str) -> Config:
    """The validated config in the YAML editor (every problem at once, as `tuneforge config check` reports them)."""
    cfg = validate(schema.parse_yaml(text), "YAML editor")
    check_local_files(cfg)
    if cfg.method.objective == "grpo" and (own := own_rewards(cfg.method.grpo)):  # issue 27
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


def launch(text: str, runs_dir: Path) -> tuple[str, Path]:
    """Write the editor's config to RUN/jobs/train.yaml and start `tuneforge train` on it."""
    cfg = config_from_yaml(text)
    run = Path(cfg.output.dir).expanduser().resolve()
    if not run.is_relative_to(runs_dir.resolve()):
        raise UserError(
            f"output.dir: {cfg.output.dir} is outside the runs folder {runs_dir}; the UI watches runs there"
        )
    config = jobs.job_dir(run) / "train.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, text)
    state = jobs.launch(run, "train", ["train", str(config)])
    return f"training started (pid {state.pid}): {run}", run


def preview_html(text: str) -> str:
    """The first samples as the trainer receives them, trained tokens marked (what `tuneforge data preview` shows)."""
    from tuneforge.data.prepare import prepare
    from tuneforge.data.preview import trained_segments
    from tuneforge.model.load import load_tokenizer

    cfg = config_from_yaml(text)
    tokenizer = load_tokenizer(cfg.model)
    dataset = prepare(cfg.data, tokenizer, log=lambda *_a, **_k: None).train
    blocks = []
    for i in range(min(PREVIEW_SAMPLES, len(dataset))):
        row = dataset[i]
        spans = "".join(
            f'<span class="{"trained" if trained else "prompt"}">{html.escape(chunk)}</span>'
            for chunk, trained in trained_segments(row["input_ids"], row["labels"], tokenizer)
        )
        blocks.append(f"<h4>sample {i}: {len(row['input_ids'])} tokens</h4><pre class='sample'>{spans}</pre>")
    legend = "<p><span class='trained'>trained</span> <span class='prompt'>prompt (no loss)</span></p>"
    return legend + "".join(blocks)


def estimate_text(text: str, cpu: bool) -> str:
    """The estimator's memory table, exact step count and GPU verdicts, as `tuneforge estimate CONFIG` prints them."""
    from rich.console import Console

    from tuneforge.estimate.memory import Job, estimate, load_shape
    from tuneforge.estimate.report import GPU_SIZES, print_report
    from tuneforge.estimate.steps import plan_steps

    cfg = config_from_yaml(text)
    out = io.StringIO()
    console = Console(file=out, width=110, highlight=False, color_system=None)
    plan = plan_steps(cfg, console.print)
    est = estimate(Job.from_config(cfg, load_shape(cfg.model), "cpu" if cpu else "cuda", plan.longest))
    print_report(est, plan, () if cpu else GPU_SIZES, console)
    return out.getvalue()


CSS = """
pre.sample { white-space: pre-wrap; font-size: 0.85em; }
span.trained { background: #c8f7c5; color: #114411; }
span.prompt { color: #888; }
"""


def build(runs_dir: Path, run: gr.Dropdown, browse_root: Path) -> dict[str, gr.components.Component]:
    """The Train tab (inside a gr.Tab); a launch selects the new run in `run`. Returns each config key's component."""
    default = {"output": {"dir": str(runs_dir / "my-run")}}
    initial = schema.raw_to_form(default)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Accordion(t("browse"), open=False):
                folder = gr.Textbox(value=str(browse_root), label=t("folder"), max_lines=1, elem_id="browse-folder")
                entries = gr.Dropdown(choices=_entries(browse_root), label=t("entries"), elem_id="browse-entries")
                with gr.Row():
                    use_model = gr.Button(t("use_model"), size="sm")
                    use_dataset = gr.Button(t("use_dataset"), size="sm")
            form: list[gr.components.Component] = []
            sections: dict[str, list[schema.Field]] = {}
            for field in schema.FIELDS:
                sections.setdefault(field.section, []).append(field)
            for section, fields in sections.items():
                wanted = section in ("model", "data", "data.datasets[0]", "train", "output")
                with gr.Accordion(section, open=wanted, elem_id=f"section-{elem_id(section)[4:]}"):
                    form += [_component(field, initial[schema.FIELDS.index(field)]) for field in fields]
        with gr.Column(scale=2):
            editor = gr.Code(
                value=schema.dump_yaml(default), language="yaml", label=t("yaml"), interactive=True, elem_id="yaml"
            )
            message = gr.Markdown(elem_id="train-message")
            with gr.Row():
                launch_button = gr.Button(t("launch"), variant="primary", elem_id="launch")
                stop_button = gr.Button(t("stop"), variant="stop", elem_id="stop")
                resume_button = gr.Button(t("resume"), elem_id="resume")
            with gr.Row():
                preview_button = gr.Button(t("preview"), elem_id="preview")
                estimate_button = gr.Button(t("estimate"), elem_id="estimate")
                cpu = gr.Checkbox(False, label=t("estimate_cpu"))
            estimate_box = gr.Textbox(label=t("estimate"), lines=12, max_lines=30, elem_id="estimate-text")
            preview_box = gr.HTML(elem_id="preview-html")
    fields = dict(zip((f.path for f in schema.FIELDS), form, strict=True))

    def form_changed(*values: Any) -> tuple[Any, str]:
        try:
            return schema.dump_yaml(schema.form_to_raw(list(values))), ""
        except UserError as exc:
            return gr.skip(), _error(exc)

    def editor_changed(text: str) -> list[Any]:
        try:
            return [*schema.raw_to_form(schema.parse_yaml(text)), ""]
        except UserError as exc:
            return [*(gr.skip() for _ in form), _error(exc)]

    # A form edit (`input`: the user's, never an update) rewrites the YAML. Edits are handled one at a time, in order
    # (one concurrency group): run side by side, an older edit's YAML could arrive last and undo a newer one. The YAML
    # is read back into the form when the user leaves the editor: gr.Code fires `input` on updates too, so stale text
    # would echo back over newer form values.
    sync = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id="form-sync", concurrency_limit=1)
    for component in form:
        component.input(form_changed, form, [editor, message], **sync)
    editor.blur(editor_changed, editor, [*form, message], **sync)

    def start(text: str) -> tuple[str, Any]:
        try:
            note, path = launch(text, runs_dir)
        except UserError as exc:
            return _error(exc), gr.skip()
        choices = [(p.name, str(p)) for p in jobs.list_runs(runs_dir)]
        return _ok(note), gr.Dropdown(choices=choices, value=str(path))

    def control(selected: str | None, resume: bool) -> str:
        try:
            if not selected:
                raise UserError("choose a run in the Run list first")
            path = Path(selected)
            if resume:
                state = jobs.launch(path, "train", jobs.train_args(path, resume=True))
                return _ok(f"resumed (pid {state.pid}): {path}")
            jobs.stop(path, "train")
            return _ok(f"stop sent to {path}: it saves a checkpoint after the current step, then exits")
        except UserError as exc:
            return _error(exc)

    def guarded(fn, *args: Any) -> str:
        try:
            return fn(*args)
        except UserError as exc:
            return _error(exc)

    launch_button.click(start, editor, [message, run])
    stop_button.click(lambda r: control(r, resume=False), run, message)
    resume_button.click(lambda r: control(r, resume=True), run, message)
    preview_button.click(lambda text: guarded(preview_html, text), editor, preview_box)
    estimate_button.click(lambda text, c: guarded(estimate_text, text, c), [editor, cpu], estimate_box)
    folder.submit(lambda f: gr.Dropdown(choices=_entries(Path(f))), folder, entries)

    def use(entry: str | None, key: str, *values: Any) -> list[Any]:
        if not entry:
            return [gr.skip(), *(gr.skip() for _ in form)]
        values = list(values)
        values[list(fields).index(key)] = entry
        return [schema.dump_yaml(schema.form_to_raw(values)), *values]

    use_model.click(lambda e, *v: use(e, "model.name_or_path", *v), [entries, *form], [editor, *form])
    use_dataset.click(lambda e, *v: use(e, "data.datasets[0].path", *v), [entries, *form], [editor, *form])
    return fields


def _entries(folder: Path) -> list[str]:
    """Model folders (with config.json), data files and sub-folders in `folder`, as absolute paths."""
    try:
        children = sorted(folder.expanduser().resolve().iterdir())
    except OSError:
        return []
    return [str(p) for p in children if p.is_dir() or p.suffix.lower() in DATA_SUFFIXES]
