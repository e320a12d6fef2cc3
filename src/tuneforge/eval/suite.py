"""Eval suites: YAML files of short task entries, validated like the training config (unknown keys are errors).

    name: quick
    tasks:
      - {name: heldout-loss, type: loss}            # the run's validation split
      - {name: self-cognition, type: probe}         # name / author from the run's placeholders
      - {name: cmmlu, type: mcq, path: cmmlu, shots: 0, limit: 200}

Relative `path`s are read from the suite file's folder; for the suites shipped in the package (their benchmark
files are not shipped: licences) from `--data-dir`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from tuneforge.config import Section, describe_validation
from tuneforge.errors import UserError
from tuneforge.infer.remote import CLIENT_KEY_ENV

PROBE_QUESTIONS = {
    "name": [
        "你是谁？",
        "Who are you?",
        "你叫什么名字？",
        "What is your name?",
        "请介绍一下你自己。",
        "Introduce yourself.",
    ],
    "author": ["谁开发了你？", "Who developed you?", "你是哪个公司开发的？", "Who made you?"],
}


class JudgeConfig(Section):
    """The judging model of a judge task: any OpenAI-compatible endpoint."""

    endpoint: str = Field(description="The judge's OpenAI-compatible server, e.g. http://host:8000 (/v1 is added).")
    model: str = Field(description="The judge's model name on that server.")
    api_key_env: str | None = Field(
        None, description=f"Environment variable holding its API key [default: {', '.join(CLIENT_KEY_ENV)}]."
    )
    max_tokens: int = Field(1024, ge=1, description="Longest judgement (thinking included).")
    concurrency: int = Field(8, ge=1, description="Judge requests in flight at once.")


class TaskConfig(Section):
    name: str = Field(description="The task's name in reports and in --tasks.")
    type: Literal["loss", "probe", "generation", "mcq", "math", "judge"] = Field(description="What is measured.")
    path: str | None = Field(
        None,
        description="Data file (loss, generation, math, judge: the prompts) or benchmark folder (mcq); loss: default "
        "the run's validation split.",
    )
    format: str = Field("auto", description="Training data format of `path` (loss, generation, judge).")
    layout: Literal["auto", "cmmlu", "ceval", "mmlu"] = Field("auto", description="mcq: the benchmark's file layout.")
    subjects: list[str] | None = Field(None, description="mcq: subjects (file names without .csv); default all.")
    shots: int = Field(0, ge=0, description="mcq: examples from the dev split shown first.")
    method: Literal["likelihood", "generate"] = Field(
        "likelihood", description="mcq: next-token likelihood of the choice letters, or generation + extraction."
    )
    questions: dict[Literal["name", "author"], list[str]] = Field(
        default_factory=lambda: dict(PROBE_QUESTIONS), description="probe: questions, by what the answer must name."
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="probe: {name, author} to expect (default: the run's data placeholders)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer (thinking included).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items (--limit overrides).")
    judge: JudgeConfig | None = Field(None, description="judge: the judging model's endpoint.")
    mode: Literal["pairwise", "rubric"] = Field(
        "pairwise", description="judge: fine-tuned vs baseline (both orders), or a 1-10 rating of each answer."
    )
    rubric: str | None = Field(None, description="judge, rubric mode: the criteria [default: helpfulness, …].")


class SuiteConfig(Section):
    name: str = Field(description="Report folder name: RUN/eval/<name>/.")
    tasks: list[TaskConfig] = Field(min_length=1, description="The tasks, run in this order.")


def shipped_suites() -> dict[str, Path]:
    """The suites shipped in the package: {name: file}."""
    folder = resources.files("tuneforge.eval").joinpath("suites")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def load_suite(source: str | Path, data_dir: Path | None = None) -> tuple[SuiteConfig, Path]:
    """A suite by file path or shipped name, and the folder its relative paths are read from."""
    shipped = shipped_suites()
    path = shipped.get(str(source), Path(source))
    if not path.is_file():
        raise UserError(f"--suite {source}: no such file or shipped suite; shipped: {', '.join(sorted(shipped))}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        suite = SuiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation(exc, str(path), SuiteConfig)) from None
    names = [t.name for t in suite.tasks]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: task names must be distinct (got {', '.join(names)})")
    base = (data_dir or Path.cwd()) if path in shipped.values() else path.parent
    return suite, base


def suite_of_tasks(names: list[str]) -> SuiteConfig:
    """A suite of shipped tasks picked by name (--tasks), in the order given."""
    known: dict[str, TaskConfig] = {}
    for file in shipped_suites().values():
        for task in SuiteConfig.model_validate(yaml.safe_load(file.read_text(encoding="utf-8"))).tasks:
            known.setdefault(task.name, task)
    missing = [n for n in names if n not in known]
    if missing:
        raise UserError(f"--tasks: unknown task {', '.join(missing)}; shipped tasks: {', '.join(sorted(known))}")
    return SuiteConfig(name="-".join(names), tasks=[known[n] for n in names])
