"""The config reference: every key of the schema with its default (or a config's value), allowed values and doc.

`tuneforge config show` and docs/config.md are both rendered by `reference()` from the pydantic models in
config.py, so the docs cannot drift from the schema without tests/test_config_reference.py noticing.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tuneforge.config import Config

REGENERATE = "tuneforge config show --markdown --out docs/config.md"
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


@dataclass(frozen=True)
class Key:
    """One leaf key: dotted path, value (default or the config's), allowed values, description."""

    section: str
    path: str
    value: str
    allowed: str
    description: str


def yaml_text(value: Any) -> str:
    """A value as YAML flow text, so that it can be pasted into a config or a key=value override."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000, sort_keys=False)
    text = text.removesuffix("\n...\n").strip()
    # YAML folds multi-line strings over several lines; JSON (also YAML) keeps them on one, escaped.
    return json.dumps(value, ensure_ascii=False) if "\n" in text else text


def nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(section model, is a list of them) for a field holding a section, else (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    return None, False


def _type_text(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(yaml_text(v) for v in get_args(annotation))
    if annotation is bool:
        return "true | false"
    if get_origin(annotation) is list:
        return f"list of {_type_text(get_args(annotation)[0])}"
    if get_origin(annotation) is dict:
        key, value = get_args(annotation)
        return f"mapping of {_type_text(key)} to {_type_text(value)}"
    return getattr(annotation, "__name__", str(annotation))


def _allowed(field: FieldInfo) -> str:
    """Allowed values: the choices of a Literal, or the type with its bounds; `| null` where None is valid."""
    annotation = field.annotation
    union = get_origin(annotation) in (Union, types.UnionType)
    choices = get_args(annotation) if union else (annotation,)
    members = [a for a in choices if a is not type(None)]
    text = " | ".join(_type_text(a) for a in members)
    bounds = [
        f"{symbol} {getattr(m, name)}"
        for m in field.metadata
        for name, symbol in _BOUNDS
        if isinstance(m, annotated_types.BaseMetadata) and getattr(m, name, None) is not None
    ]
    bounds += [f"at least {m.min_length} item(s)" for m in field.metadata if isinstance(m, annotated_types.MinLen)]
    if bounds:
        text += " " + ", ".join(bounds)
    return text + (" | null" if len(members) < len(choices) else "")


def _walk(model: type[BaseModel], prefix: str, values: BaseModel | None, sections: dict[str, str]) -> Iterator[Key]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested, many = nested_model(field.annotation)
        if nested is not None and many:
            items = getattr(values, name) if values is not None else [None]
            for i, item in enumerate(items):
                section = f"{path}[{'' if values is None else i}]"
                sections[section] = field.description or ""
                yield from _walk(nested, section + ".", item, sections)
        elif nested is not None:
            sections[path] = field.description or ""
            yield from _walk(nested, path + ".", None if values is None else getattr(values, name), sections)
        else:
            if values is not None:
                value = yaml_text(getattr(values, name))
            else:
                value = "(required)" if field.is_required() else yaml_text(field.get_default(call_default_factory=True))
            yield Key(prefix.removesuffix("."), path, value, _allowed(field), field.description or "")


def keys(config: Config | None = None) -> tuple[list[Key], dict[str, str]]:
    """Every leaf key (the config's values where given, else the defaults), and each section's description."""
    sections: dict[str, str] = {}
    return list(_walk(Config, "", config, sections)), sections


def _text(rows: list[Key], value_title: str) -> str:
    header = Key("", "key", value_title, "allowed", "description")
    table = [header, *rows]
    widths = [max(len(getattr(k, column)) for k in table) for column in ("path", "value", "allowed")]
    return "".join(
        f"{k.path:<{widths[0]}}  {k.value:<{widths[1]}}  {k.allowed:<{widths[2]}}  {k.description}\n" for k in table
    )


def _markdown(rows: list[Key], sections: dict[str, str], value_title: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        "# Config reference\n",
        f"<!-- Generated from src/tuneforge/config.py by `{REGENERATE}`; do not edit by hand. -->\n",
        "Every key of a tuneforge YAML config, with its default, the values it accepts and what it does. "
        "`tuneforge config show CONFIG` prints the same table with a config's values; `key.sub=value` arguments "
        "to `train`, `config check` and `data` override any key. `data.datasets[]` is a list: each entry takes "
        "the keys below.\n",
    ]
    for section, description in sections.items():
        out.append(
            f"## {section}\n\n{description}\n\n| key | {value_title} | allowed | description |\n|---|---|---|---|"
        )
        out += [
            f"| `{k.path}` | {cell(k.value)} | {cell(k.allowed)} | {cell(k.description)} |"
            for k in rows
            if k.section == section
        ]
        out.append("")
    return "\n".join(out)


def reference(config: Config | None = None, markdown: bool = False) -> str:
    """The reference as aligned text, one line per key (`config show`), or as Markdown tables (docs/config.md)."""
    rows, sections = keys(config)
    value_title = "default" if config is None else "value"
    return _markdown(rows, sections, value_title) if markdown else _text(rows, value_title)
