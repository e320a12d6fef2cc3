"""The Train tab's form: the essentials first, every other config key in a folded group, one component per key.

Each component is labelled plainly in the page's language, with its YAML key and help as the hint (i18n.py); its
choices are the config's Literal (schema.py). The model and the first dataset are pickers that also take free text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from tuneforge.webui import schema
from tuneforge.webui.i18n import t

# The keys people change, in the order they are shown (LlamaBoard's first screen): model, method, data, numbers.
ESSENTIALS = (
    "model.name_or_path",
    "method.type",
    "method.objective",
    "data.datasets[0].path",
    "train.epochs",
    "train.learning_rate",
    "data.max_length",
    "train.per_device_batch_size",
    "train.gradient_accumulation",
)
LOGGING = ("train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_total_limit", "train.report_to",
           "output.dir", "output.overwrite")  # fmt: skip
# Folded groups, in page order: (i18n word, the keys' prefix); keys no prefix claims go to "advanced".
GROUPS = (("group_method", "method."), ("group_data", "data."), ("group_distributed", "distributed."),
          ("group_logging", None), ("group_advanced", ""))  # fmt: skip


def elem_id(path: str) -> str:
    """The HTML id of a config key's component: `data.datasets[0].path` → `cfg-data-datasets-0-path`."""
    return "cfg-" + path.replace("[", "-").replace("]", "").replace(".", "-")


def group_of(path: str) -> str:
    """The folded group a non-essential key is shown in."""
    if path in LOGGING:
        return "group_logging"
    return next(name for name, prefix in GROUPS if prefix is not None and path.startswith(prefix))


def component(
    field: schema.Field, value: Any, choices: list[str] | None = None, brief: bool = False, **extra: Any
) -> Any:
    """The component of one config key; `choices` makes a text key a picker that still takes free text; `brief`
    hints the YAML key alone (the essentials: their help is in the YAML reference and the folded groups' style)."""
    hint = field.path if brief else t(f"help:{field.path}")
    common = dict(label=t(f"label:{field.path}"), info=hint, elem_id=elem_id(field.path), interactive=True)
    common.update(extra)
    if choices is not None:
        return gr.Dropdown(choices=choices, value=value or None, allow_custom_value=True, **common)
    if field.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if field.kind == "choice" and len(field.choices) <= 3:
        return gr.Radio(choices=list(field.choices), value=value, **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=value, **common)
    if field.kind == "number":
        return gr.Number(value=value, precision=0 if field.integer else None, **common)
    hint = "(required)" if field.required else ("YAML value, empty: default" if field.kind == "yaml" else "")
    return gr.Textbox(value=value, placeholder=hint, max_lines=1, **common)


def essentials(values: dict[str, Any], models: list[str], data: list[str], more: Callable[[], None]) -> dict[str, Any]:
    """The essential keys' components in three rows (inside the caller's layout); `more()` ends the last row."""
    by_path = {f.path: f for f in schema.FIELDS}
    made: dict[str, Any] = {}

    def add(path: str, **extra: Any) -> None:
        made[path] = component(by_path[path], values[path], brief=True, **extra)

    with gr.Row(equal_height=True):
        add("model.name_or_path", choices=models, scale=3)
        add("method.type", scale=2)
        add("method.objective", scale=1)
    with gr.Row(equal_height=True):
        add("data.datasets[0].path", choices=data, scale=3)
        add("train.epochs", scale=1)
        add("train.learning_rate", scale=1)
    with gr.Row(equal_height=True):
        for path in ESSENTIALS[6:]:
            add(path, scale=1)
        more()
    return made


def folded(values: dict[str, Any], more: dict[str, Callable[[], None]]) -> dict[str, Any]:
    """Every other key's component, in closed accordions by group (inside the caller's layout); `more[group]()`
    adds the caller's own components at the end of that group."""
    made: dict[str, Any] = {}
    rest = [f for f in schema.FIELDS if f.path not in ESSENTIALS]
    for name, _ in GROUPS:
        with gr.Accordion(t(name), open=False, elem_id=name.replace("_", "-")):
            for field in rest:
                if group_of(field.path) == name:
                    made[field.path] = component(field, values[field.path])
            if name in more:
                more[name]()
    return made
