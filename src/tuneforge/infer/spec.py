"""What to load for inference: base weights under a served name, named LoRA adapters on them, a tokenizer.

One resolution shared by `chat`, the built-in server and the vLLM / SGLang launchers, so every engine serves
the same names. Naming follows vLLM: the weights are served under the name they were given by (`--model`
as typed, or the run's `model.name_or_path`) unless `--served-model-name` says otherwise; each adapter
under its own name; a LoRA run's adapter under the run folder's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import ModelConfig
from tuneforge.errors import UserError
from tuneforge.rundir import Run


@dataclass(frozen=True)
class ModelSpec:
    """Weights to load and the names they are served under."""

    name: str  # served name of the base weights (a merged or fully fine-tuned model counts as a base)
    model: ModelConfig  # where the base weights are
    tokenizer: ModelConfig  # where the tokenizer (and its chat template) is
    adapters: dict[str, Path] = field(default_factory=dict)  # served name -> peft adapter folder
    others: dict[str, ModelConfig] = field(default_factory=dict)  # further full models (a full run + its base)

    @property
    def names(self) -> list[str]:
        """Every served name: the base first, then the fine-tuned ones."""
        return [self.name, *self.adapters, *self.others]


def parse_adapters(items: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """`NAME=DIR` flags to {name: folder} (resolve_spec checks the folders)."""
    adapters: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--adapter '{item}': expected NAME=DIR, e.g. --adapter mybot=runs/mybot/adapter")
        if name in adapters:
            raise UserError(f"--adapter '{item}': the name '{name}' is given twice")
        adapters[name] = Path(folder)
    return adapters


def resolve_spec(
    *,
    model: str | None = None,
    run: str | Path | Run | None = None,
    adapters: dict[str, Path] | None = None,
    served_name: str | None = None,
    with_base: bool = False,
) -> ModelSpec:
    """Resolve `--model` / `--run` (a path, or the caller's open Run) / `--adapter` into a ModelSpec.

    `with_base` also loads a full run's base.
    """
    adapters = {
        name: _adapter_dir(Path(folder), f"--adapter {name}={folder}") for name, folder in (adapters or {}).items()
    }
    if run is None:
        if model is None:
            raise UserError("give the model to load: --model DIR_OR_HUB_ID, or --run RUN_DIR")
        base = ModelConfig(name_or_path=model)
        return _checked(ModelSpec(served_name or model, base, base, adapters))
    rundir = run if isinstance(run, Run) else Run.open(run)
    base = ModelConfig(name_or_path=model) if model else rundir.base_model_config()
    base_name = model or rundir.cfg.model.name_or_path
    run_name = rundir.name
    if rundir.adapter.is_dir():
        adapter = _adapter_dir(rundir.adapter, f"--run {rundir.root}")
        tokenizer = ModelConfig(name_or_path=str(adapter)) if (adapter / "tokenizer_config.json").is_file() else base
        return _checked(ModelSpec(served_name or base_name, base, tokenizer, {run_name: adapter, **adapters}))
    if rundir.model.is_dir():
        full = ModelConfig(name_or_path=str(rundir.model))
        if with_base:
            return _checked(ModelSpec(base_name, base, full, adapters, {served_name or run_name: full}))
        return _checked(ModelSpec(served_name or run_name, full, full, adapters))
    raise UserError(f"--run {rundir.root}: no adapter/ or model/ folder in it; has the run finished?")


def _adapter_dir(folder: Path, flag: str) -> Path:
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{flag}: {folder} is not a peft adapter folder (no adapter_config.json)")
    return folder


def _checked(spec: ModelSpec) -> ModelSpec:
    """The spec, once its served names are known to be distinct."""
    names = spec.names
    for name in names:
        if names.count(name) > 1:
            raise UserError(
                f"served name '{name}' is used twice; rename with --served-model-name or --adapter NAME=DIR"
            )
    return spec
