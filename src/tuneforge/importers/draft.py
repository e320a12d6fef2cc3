"""The config an import builds, and the rules that move one source key into it (each rule reports what it did)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

import yaml

from tuneforge.errors import UserError
from tuneforge.importers.report import ImportReport

Rule = Callable[["Draft", str, Any], None]
REPORT_TO = ("none", "tensorboard", "swanlab", "wandb", "mlflow")


class Draft:
    """A tuneforge config mapping under construction, the source's arguments, and the report of every decision."""

    def __init__(self, report: ImportReport, args: dict[str, Any]) -> None:
        self.report = report
        self.args = args
        self.raw: dict[str, Any] = {"model": {}, "data": {"datasets": []}, "method": {}, "train": {}, "output": {}}

    def set(self, target: str, value: Any) -> None:
        """Set a dotted tuneforge key (model.name_or_path) in the mapping."""
        *sections, last = target.split(".")
        node = self.raw
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value

    def get(self, target: str, default: Any = None) -> Any:
        """A dotted tuneforge key's value so far, or `default`."""
        node: Any = self.raw
        for part in target.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def default(self, target: str, value: Any, why: str) -> None:
        """Set a key the source left at its own default where tuneforge's default differs, and say so."""
        if self.get(target) is None:
            self.set(target, value)
            self.report.add(f"({target})", value, "noted", target, why)

    def apply(self, rules: dict[str, Rule], unknown: str) -> None:
        """Run every source key through its rule; a key with no rule is reported as dropped (`unknown` says why)."""
        for key, value in self.args.items():
            rule = rules.get(key)
            if rule is None:
                self.report.add(key, value, "dropped", "", unknown)
            else:
                rule(self, key, value)


def kto_batch(draft: Draft) -> None:
    """tuneforge's kto needs 2 answers per batch: keep the effective batch, halving gradient accumulation."""
    accumulation = draft.get("train.gradient_accumulation", 1)
    batch = draft.get("train.per_device_batch_size")
    draft.set("train.per_device_batch_size", 2)
    draft.set("train.gradient_accumulation", max(1, accumulation * batch // 2))
    draft.report.add(
        "(train.per_device_batch_size)",
        2,
        "noted",
        "train.per_device_batch_size, gradient_accumulation",
        f"kto estimates its KL term from the other answers of a batch, so it needs 2 per batch: "
        f"{batch} × {accumulation} became 2 × {max(1, accumulation * batch // 2)}",
    )


def to(target: str, convert: Callable[[Any], Any] | None = None, note: str = "") -> Rule:
    """A key that becomes one tuneforge key (converted), reported as mapped, or noted when `note` says more."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        try:
            draft.set(target, convert(value) if convert else value)
        except (TypeError, ValueError):
            raise UserError(f"{draft.report.source}: {key}: unexpected value {value!r}") from None
        draft.report.add(key, value, "noted" if note else "mapped", target, note)

    return rule


def drop(reason: str, nearest: str = "") -> Rule:
    """A key tuneforge has no place for: reported as dropped with the reason and the nearest tuneforge feature."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        draft.report.add(key, value, "dropped", nearest, reason)

    return rule


def noted(note: str, target: str = "") -> Rule:
    """A key the import reads or that tuneforge always does the same: nothing to set, said in the note."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        draft.report.add(key, value, "noted", target, note)

    return rule


def off_only(feature: str, nearest: str = "", off: tuple[Any, ...] = (None, False, 0, 0.0, "", "none")) -> Rule:
    """A feature tuneforge lacks: fine while switched off (reported), refused when switched on."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        if value in off:
            draft.report.add(key, value, "noted", nearest, f"off, as in tuneforge ({feature} is not supported)")
        else:
            draft.report.refuse(
                key, value, f"{feature} is not supported" + (f" (nearest: {nearest})" if nearest else "")
            )

    return rule


def method_type(quant_key: str) -> Rule:
    """lora or full (others refuse); lora with `quant_key` set in the source is tuneforge's qlora."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        if value not in ("lora", "full"):
            draft.report.refuse(key, value, f"fine-tuning type {value} (tuneforge has lora, qlora and full)")
            return
        quantized = value == "lora" and draft.args.get(quant_key) is not None
        draft.set("method.type", "qlora" if quantized else value)
        note = f"{quant_key} is set: LoRA on a quantized base is tuneforge's qlora" if quantized else ""
        draft.report.add(key, value, "noted" if quantized else "mapped", "method.type", note)

    return rule


def eval_steps(val_key: str) -> Rule:
    """Evaluation every N steps, which needs a validation split (`val_key` in the source); dropped without one."""

    def rule(draft: Draft, key: str, value: Any) -> None:
        if draft.args.get(val_key):
            to("train.eval_steps", int)(draft, key, value)
        else:
            draft.report.add(key, value, "dropped", "train.eval_steps", f"no {val_key}: nothing to evaluate on")

    return rule


def as_bool(value: Any) -> bool:
    """true/false from YAML or a command line ("true", "False", "1")."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)


def as_list(value: Any) -> list[str]:
    """A comma-separated string or a list (LLaMA-Factory and swift both accept either) as a list of names."""
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    return [str(i).strip() for i in items if str(i).strip()]


def parse_command(text: str, programs: dict[tuple[str, ...], str]) -> tuple[str, dict[str, Any]]:
    """A shell script's command line (backslash continuations, comments, VAR=value lines and prefixes) → (kind, args).

    `programs` maps the leading words (("swift", "sft")) to the kind they name; the first line that starts with one
    is read, with $VAR / ${VAR} from the script's assignments. Flags without a value are true; a flag given several
    values (--dataset a b) keeps them as a list. Prefix assignments come back as `env.NAME` keys.
    """
    variables: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(_expand(line, variables), comments=True)
        env = {}
        while words and ASSIGNMENT.fullmatch(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words == ["export"] or not words:
            variables |= env  # a plain assignment line: later lines may use it
            continue
        for lead, kind in programs.items():
            if tuple(words[: len(lead)]) == lead:
                args = _options(words[len(lead) :])
                return kind, args | {f"env.{k}": v for k, v in env.items()}
    expected = " or ".join(" ".join(lead) for lead in programs)
    raise UserError(f"command line: no line starts with {expected}")


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)


def _expand(line: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced by the script's earlier assignments (others are left as written)."""
    line = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m[1], m[0]), line)
    # $(expr 16 / 2), as swift's multi-GPU examples compute gradient accumulation
    return re.sub(r"\$\(expr (\d+) ([-+*/]) (\d+)\)", lambda m: str(_arith(int(m[1]), m[2], int(m[3]))), line)


def _arith(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _options(words: list[str]) -> dict[str, Any]:
    """--name value / --name=value / --flag words as a mapping (values read as YAML scalars)."""
    args: dict[str, Any] = {}
    current = None
    for word in words:
        if word.startswith("--"):
            current, eq, value = word[2:].partition("=")
            current = current.replace("-", "_")
            args[current] = _scalar(value) if eq else True
        elif current is None:
            raise UserError(f"command line: unexpected word {word!r} before the first --option")
        else:
            previous = args[current]
            args[current] = _scalar(word) if previous is True else [*_listed(previous), _scalar(word)]
    return args


def _scalar(word: str) -> Any:
    """A command-line value as YAML reads it (1e-4 stays text there, so numbers are tried first)."""
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    try:
        return yaml.safe_load(word) if word else word
    except yaml.YAMLError:
        return word


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
