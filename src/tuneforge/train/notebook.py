"""The notebook API: what the CLI does, in a few Python calls.

    import tuneforge
    run = tuneforge.train("config.yaml", train={"max_steps": 60})   # or train__max_steps=60
    run.chat("Who are you?")
    run.eval(tasks="self-cognition")
    run.merge()
    run.export(to="gguf", qtype="q4_k_m")

Thin wrappers over the same service functions the CLI calls; every import happens inside a call, so
`import tuneforge` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError


def _raw(config: Any) -> tuple[dict[str, Any], str]:
    """A config mapping (and its name for messages) from a path, a mapping or a Config."""
    from tuneforge.config import Config, read_yaml

    if isinstance(config, (str, Path)):
        return read_yaml(config), str(config)
    if isinstance(config, Config):
        return config.model_dump(mode="json"), "config"
    if isinstance(config, dict):
        return dict(config), "config"
    raise UserError(f"tuneforge.train: expected a config path, mapping or Config, got {type(config).__name__}")


def apply_keywords(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides on a config mapping: section={"key": value} merges, section__key=value sets one key."""
    for name, value in overrides.items():
        if "__" in name:
            section, _, key = name.partition("__")
            value = {key: value}
        else:
            section = name
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    return raw


@dataclass
class NotebookRun:
    """A finished training run, with the commands that follow training as methods."""

    path: Path
    _session: Any = field(default=None, repr=False)

    @property
    def run(self):
        """The run folder's `tuneforge.rundir.Run` (config, manifest, artifact paths)."""
        from tuneforge.rundir import Run

        return Run.open(self.path)

    def chat(self, prompt: str, think: bool | None = False, max_new_tokens: int = 256, base: bool = False) -> str:
        """The fine-tuned model's answer (the base model's with base=True); the model stays loaded between calls."""
        from tuneforge.infer.backend import SamplingParams
        from tuneforge.infer.chat import open_session

        if self._session is None:
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
            self._session = open_session(None, None, str(self.path), params, think=think)
        session = self._session
        return session.ask([], prompt, model=session.base if base else session.tuned).content

    def eval(self, tasks: str | list[str] | None = None, suite: str | None = None, **request: Any):
        """`tuneforge eval --run RUN`: the fine-tuned model against its base; returns the Evaluation."""
        from tuneforge.eval.request import EvalRequest
        from tuneforge.eval.run import evaluate

        names = tasks.split(",") if isinstance(tasks, str) else tasks
        return evaluate(EvalRequest(run=self.path, tasks=names, suite=suite, **request))

    def merge(self, out: str | Path | None = None, dtype: str = "bf16", force: bool = False):
        """`tuneforge merge`: the adapter merged into RUN/merged (or `out`); returns the merged folder."""
        from tuneforge.export.pipeline import merge_run

        run = self.run
        merge_run(run, Path(out) if out else None, dtype=dtype, force=force)
        return Path(out) if out else run.merged

    def export(self, to: str | list[str] = "gguf", qtype: str = "f16", force: bool = False):
        """`tuneforge export --run RUN`: GGUF (and an Ollama Modelfile with to="gguf,ollama"); returns the result."""
        from tuneforge.export.pipeline import export_run

        targets = to.split(",") if isinstance(to, str) else to
        return export_run(self.path, targets, qtype, force=force)


def train(config: Any, **overrides: Any) -> NotebookRun:
    """Train as `tuneforge train` does, from a config path, mapping or Config with keyword overrides."""
    from tuneforge.config import validate
    from tuneforge.train.run import train as train_run

    raw, source = _raw(config)
    cfg = validate(apply_keywords(raw, overrides), source)
    run = train_run(cfg)
    return NotebookRun(Path(run.root))
