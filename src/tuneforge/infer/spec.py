"""What to load for inference: base weights under a served name, named LoRA adapters on them, a tokenizer.

One resolution shared by `chat`, the built-in server and the vLLM / SGLang launchers, so every engine serves
the same names. Naming follows vLLM: the weights are served under the name they were given by (`--model`
as typed, or the run's `model.name_or_path`) unless `--served-model-name` says otherwise; each adapter
under its own name; a LoRA run's adapter under the run folder's name.

A run's model is run as it was trained: a QLoRA run's base loads quantized with the settings run.json recorded
(`quantize`), and the run's served name defaults to the thinking mode it trained in (`thinking`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.errors import UserError
from tuneforge.model.load import DeviceMap
from tuneforge.rundir import Run


@dataclass(frozen=True)
class ModelSpec:
    """Weights to load and the names they are served under."""

    name: str  # served name of the base weights (a merged or fully fine-tuned model counts as a base)
    model: ModelConfig  # where the base weights are
    tokenizer: ModelConfig  # where the tokenizer (and its chat template) is
    adapters: dict[str, Path] = field(default_factory=dict)  # served name -> peft adapter folder
    others: dict[str, ModelConfig] = field(default_factory=dict)  # further full models (a full run + its base)
    quantize: MethodConfig | None = None  # bitsandbytes settings the base loads with (method.type qlora), or 16-bit
    thinking: dict[str, bool] = field(default_factory=dict)  # served name -> the thinking mode its run trained in
    device_map: DeviceMap | None = None  # --device-map: every model spread over the GPUs (None: each on one device)

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
    quantize: bool | None = None,
    device_map: DeviceMap | None = None,
) -> ModelSpec:
    """Resolve `--model` / `--run` (a path, or the caller's open Run) / `--adapter` into a ModelSpec.

    `with_base` also loads a full run's base. `quantize` (`--load-in-4bit/--no-quantize`): None loads a QLoRA
    run's base as it was trained and anything else in 16 bit; True loads the base in 4 bit (a QLoRA run: with its
    own settings); False in 16 bit. `device_map` spreads the weights over several GPUs.
    """
    spec = _resolve(model, run, adapters, served_name, with_base, quantize)
    return replace(spec, device_map=device_map)


def _resolve(
    model: str | None,
    run: str | Path | Run | None,
    adapters: dict[str, Path] | None,
    served_name: str | None,
    with_base: bool,
    quantize: bool | None,
) -> ModelSpec:
    adapters = {
        name: _adapter_dir(Path(folder), f"--adapter {name}={folder}") for name, folder in (adapters or {}).items()
    }
    if run is None:
        if model is None:
            raise UserError("give the model to load: --model DIR_OR_HUB_ID, or --run RUN_DIR")
        base = ModelConfig(name_or_path=model)
        return _checked(ModelSpec(served_name or model, base, base, adapters, quantize=_quantization(None, quantize)))
    rundir = run if isinstance(run, Run) else Run.open(run)
    quantization = _quantization(rundir, quantize)
    trained = rundir.trained_thinking()
    base = ModelConfig(name_or_path=model) if model else rundir.base_model_config()
    base_name = model or rundir.cfg.model.name_or_path
    run_name = rundir.name
    if rundir.adapter.is_dir():
        adapter = _adapter_dir(rundir.adapter, f"--run {rundir.root}")
        tokenizer = ModelConfig(name_or_path=str(adapter)) if (adapter / "tokenizer_config.json").is_file() else base
        thinking = {} if trained is None else {run_name: trained}
        adapters = {run_name: adapter, **adapters}
        return _checked(ModelSpec(served_name or base_name, base, tokenizer, adapters, {}, quantization, thinking))
    if rundir.model.is_dir():
        full = ModelConfig(name_or_path=str(rundir.model))
        name = served_name or run_name
        thinking = {} if trained is None else {name: trained}
        if with_base:
            return _checked(ModelSpec(base_name, base, full, adapters, {name: full}, quantization, thinking))
        return _checked(ModelSpec(name, full, full, adapters, quantize=quantization, thinking=thinking))
    raise UserError(f"--run {rundir.root}: no adapter/ or model/ folder in it; has the run finished?")


def _quantization(run: Run | None, quantize: bool | None) -> MethodConfig | None:
    """The bitsandbytes settings to load the base with: a QLoRA run's recorded ones by default, or as flagged."""
    recorded = run.manifest()["method"].get("quantization") if run is not None else None
    if quantize is False or (quantize is None and recorded is None):
        return None
    return MethodConfig(type="qlora", **(recorded or {}))


def thinking_for(flag: bool | None, trained: bool | None, name: str) -> tuple[bool | None, str]:
    """The thinking mode to run `name` in (the --think/--no-think flag, else the one its run trained in), and why."""
    if flag is not None:
        return flag, f"thinking {'on' if flag else 'off'}, as asked"
    if trained is not None:
        return trained, f"thinking {'on' if trained else 'off'}: the mode {name} trained in"
    return None, "thinking: the chat template's default"


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
