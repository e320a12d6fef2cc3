"""The train form, generated from the pydantic config schema (tuneforge.config), and its YAML round trip.

Every leaf key of `Config` becomes one `Field` with the component kind its type calls for, so a key added to
config.py appears in the form without touching the UI. `data.datasets` is a list: the form has DATASET_SLOTS
entries (a slot with an empty path is left out); longer mixes are edited in the YAML editor.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tuneforge.config import Config
from tuneforge.config_reference import nested_model, yaml_text
from tuneforge.errors import UserError

DATASET_SLOTS = 3
UNSET = object()  # an empty box: the key is left out (typing `null` sets None explicitly)
Kind = Literal["bool", "choice", "number", "text", "yaml"]


@dataclass(frozen=True)
class Field:
    """One editable leaf key: dotted path (datasets as `data.datasets[i].key`), component kind, default, help."""

    path: str
    section: str
    kind: Kind
    default: Any
    required: bool
    description: str
    choices: tuple[Any, ...] = ()
    integer: bool = False


def _kind(info: FieldInfo) -> tuple[Kind, tuple[Any, ...], bool]:
    """The component kind for a field's annotation: its choices (Literal) and whether a number is an integer."""
    annotation = info.annotation
    if annotation is bool:
        return "bool", (), False
    if get_origin(annotation) is Literal:
        return "choice", get_args(annotation), False
    if annotation in (int, float):
        return "number", (), annotation is int
    optional_str = get_origin(annotation) in (Union, types.UnionType) and set(get_args(annotation)) == {str, type(None)}
    if annotation is str or optional_str:
        return "text", (), False
    # Optional numbers, lists, mappings and unions (target_modules: str | list) are typed as YAML values.
    return "yaml", (), False


def _walk(model: type[BaseModel], prefix: str, section: str) -> list[Field]:
    fields = []
    for name, info in model.model_fields.items():
        nested, many = nested_model(info.annotation)
        if nested is not None and many:
            if f"{prefix}{name}" != "data.datasets":
                continue  # method.grpo.rewards (issue 27): a list edited in the YAML editor
            for i in range(DATASET_SLOTS):
                fields += _walk(nested, f"{prefix}{name}[{i}].", f"{prefix}{name}[{i}]")
        elif nested is not None:
            fields += _walk(nested, f"{prefix}{name}.", f"{prefix}{name}")
        else:
            kind, choices, integer = _kind(info)
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            fields.append(
                Field(
                    f"{prefix}{name}",
                    section,
                    kind,
                    default,
                    info.is_required(),
                    info.description or "",
                    choices,
                    integer,
                )  # fmt: skip
            )
    return fields


FIELDS: list[Field] = _walk(Config, "", "")
SECTIONS: dict[str, str] = {
    name: info.description or "" for name, info in Config.model_fields.items()
}  # model, data, method, train, output, distributed: one accordion each


def to_component(field: Field, value: Any) -> Any:
    """The component value showing config `value` (text boxes show YAML; None is an empty box)."""
    if field.kind in ("bool", "choice", "number"):
        return value
    if field.kind == "text":
        return "" if value is None else str(value)
    return "" if value is None else yaml_text(value)


def from_component(field: Field, value: Any) -> Any:
    """The config value a component holds; UNSET for an empty box (the key is left out)."""
    if field.kind == "number":
        if value is None:
            return UNSET
        return int(value) if field.integer else float(value)
    if field.kind in ("bool", "choice"):
        return UNSET if value is None else value
    text = (value or "").strip()
    if not text:
        return UNSET
    if field.kind == "text":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{field.path}: not a YAML value ({getattr(exc, 'problem', exc)}): {text!r}") from None


def _split(path: str) -> list[str | int]:
    """`data.datasets[1].path` → ['data', 'datasets', 1, 'path']."""
    parts: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    return parts


def form_to_raw(values: list[Any]) -> dict[str, Any]:
    """The config mapping the form holds (values in FIELDS order): required keys and those changed from default."""
    raw: dict[str, Any] = {}
    datasets: dict[int, dict[str, Any]] = {}
    for field, component in zip(FIELDS, values, strict=True):
        value = from_component(field, component)
        if value is UNSET or (not field.required and value == field.default):
            continue
        parts = _split(field.path)
        if parts[:2] == ["data", "datasets"]:
            datasets.setdefault(parts[2], {})[parts[3]] = value
            continue
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    used = [datasets[i] for i in sorted(datasets) if datasets[i].get("path")]  # an empty slot is not a dataset
    if used:
        # Sections in the schema's order, so the YAML reads like the examples: model, data, method, train, output.
        raw["data"] = {"datasets": used, **raw.get("data", {})}
    return {name: raw[name] for name in Config.model_fields if name in raw}


def raw_to_form(raw: dict[str, Any]) -> list[Any]:
    """Component values (FIELDS order) showing a config mapping; keys it does not set show their defaults."""
    datasets = (raw.get("data") or {}).get("datasets") or []
    if len(datasets) > DATASET_SLOTS:
        raise UserError(
            f"data.datasets: {len(datasets)} datasets; the form shows {DATASET_SLOTS}, edit this mix in the YAML editor"
        )
    values = []
    for field in FIELDS:
        node: Any = raw
        for part in _split(field.path):
            if isinstance(part, int):
                node = node[part] if isinstance(node, list) and part < len(node) else None
            else:
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        values.append(to_component(field, field.default if node is None else node))
    return values


def dump_yaml(raw: dict[str, Any]) -> str:
    """The YAML text of a config mapping, in the order given (as `tuneforge train` reads it)."""
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def parse_yaml(text: str) -> dict[str, Any]:
    """The mapping a YAML editor holds; a one-line UserError naming the line on bad syntax."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"YAML editor{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError("YAML editor: expected a mapping of sections (model, data, method, train, output)")
    return raw
