"""The YAML config: one typed section per stage, validated whole before anything runs.

Every default lives here, with a one-line description; stage code reads these fields and never
re-defaults them. Unknown keys are errors that name the key and the closest valid one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneforge.config_grpo import GRPOSection  # GRPO (issue 27): its own section
from tuneforge.errors import UserError
from tuneforge.objective import Objective, ObjectiveName


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(Section):
    name_or_path: str = Field(description="Hub id (Qwen/Qwen3-8B) or a local folder with config.json.")
    hub: Literal["huggingface", "modelscope"] = Field("huggingface", description="Where a hub id is fetched from.")
    revision: str | None = Field(None, description="Branch, tag or commit of the hub repository.")
    cache_dir: str | None = Field(None, description="Download cache folder (default: the hub's own).")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="pretrained weights, or random weights from config.json (demos, tests)."
    )
    tokenizer: str | None = Field(None, description="Tokenizer folder or id, when not beside the model.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."
    )
    attn: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="Attention kernel; auto picks flash-attn 2 where usable, else sdpa."
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the hub.")
    kernels: Literal["none", "liger"] = Field(
        "none", description="liger: Liger-Kernel RMSNorm, RoPE and SwiGLU (CUDA GPU, pip install 'tuneforge[liger]')."
    )


class DatasetConfig(Section):
    path: str = Field(description="File, folder of files, or a Hugging Face / ModelScope dataset id.")
    source: Literal["auto", "local", "huggingface", "modelscope"] = Field(
        "auto", description="auto: a local path when it exists, else a Hugging Face dataset id."
    )
    format: Literal[
        "auto",
        "alpaca",
        "sharegpt",
        "messages",
        "reasoning",
        "query_response",
        "ranking",
        "messages_preference",
        "preference",
        "kto",
    ] = Field(
        "auto",
        description="Record layout; auto: detected from the first record's columns. Preference data: ranking "
        "(LLaMA-Factory), preference (TRL prompt/chosen/rejected), messages_preference, kto (completion + label).",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename the format's columns: {role_in_format: column_in_file}."
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="Fill {{name}} / {{NAME}} style placeholders in every text."
    )
    system: str | None = Field(None, description="Default system prompt for records that have none.")
    weight: float | None = Field(None, gt=0, description="Share of this dataset in the mix (relative).")
    max_samples: int | None = Field(None, gt=0, description="Keep at most this many records (after shuffle).")
    split: str = Field("train", description="Split of a hub dataset.")
    subset: str | None = Field(None, description="Subset (config name) of a hub dataset.")


class DataConfig(Section):
    datasets: list[DatasetConfig] = Field(min_length=1, description="One or more datasets, mixed by weight.")
    thinking: Literal["auto", "off", "keep_empty"] = Field(
        "auto",
        description="auto: train reasoning where a sample has it, empty think block on the prompt side "
        "otherwise; off: drop reasoning; keep_empty: train the empty think block too.",
    )
    train_on: Literal["all_turns", "last_turn"] = Field(
        "all_turns", description="Which assistant turns are trained: every one, or only the last."
    )
    max_length: int = Field(2048, ge=16, description="Longest sample in tokens.")
    truncation: Literal["drop", "truncate"] = Field("drop", description="What to do with longer samples.")
    val_size: float = Field(0.0, ge=0, description="Validation share (< 1) or count (>= 1).")
    seed: int = Field(42, description="Seed for shuffling, mixing and splitting.")
    packing: bool = Field(
        True, description="Pack each batch's samples into rows without padding; each sample attends only to itself."
    )
    group_by_length: bool = Field(True, description="Batch samples of similar length together (less padding; seeded).")
    num_proc: int | None = Field(None, ge=1, description="Tokenizer processes (default: by dataset size).")
    cache_dir: str | None = Field(None, description="Tokenized-data cache (default ~/.cache/tuneforge/data).")


class MethodConfig(Section):
    type: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora; qlora: LoRA on a bitsandbytes-quantized base; full: every weight trains."
    )
    bits: Literal[4, 8] = Field(4, description="qlora: bits per quantized base weight.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora 4-bit: NormalFloat4 (QLoRA's) or fp4.")
    double_quant: bool = Field(True, description="qlora 4-bit: quantize the block scales too (0.37 bit/weight less).")
    quant_storage: Literal["auto", "uint8", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="qlora 4-bit: dtype the packed weights are stored as; auto: the model dtype, so FSDP and "
        "ZeRO-3 can shard them together with the 16-bit weights.",
    )
    rank: int = Field(8, ge=1, description="LoRA rank r: inner size of the low-rank update.")
    alpha: int = Field(16, ge=1, description="LoRA alpha: the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field("all-linear", description="all-linear, or module names.")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(rank).")
    use_dora: bool = Field(False, description="DoRA: train a magnitude vector beside the LoRA direction.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full beside LoRA.")
    adapter: str | None = Field(
        None,
        description="lora / qlora: a LoRA adapter folder, or a finished LoRA run folder, to continue training (its "
        "rank, alpha and target modules apply); a preference objective's reference is then this adapter as loaded.",
    )
    objective: ObjectiveName = Field(
        "sft",
        description="sft: next-token loss on conversations; dpo, orpo, simpo: preference pairs (chosen/rejected "
        "answers); kto: answers labelled desirable or undesirable; grpo: prompts, sampled answers and rewards "
        "(method.grpo).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo, kto: strength of the pull towards the reference model (0.1 recommended); orpo: weight "
        "lambda of the odds-ratio term (0.1); simpo: reward scale (the SimPO paper uses 2.0-2.5).",
    )
    dpo_loss: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down"] = Field(
        "sigmoid", description="dpo: TRL's loss_type; sigmoid is the DPO paper's loss."
    )
    reference: Literal["model", "precomputed"] = Field(
        "model",
        description="dpo, kto: model: reference log-probs each step (LoRA: the adapter disabled, no copy; full: a "
        "frozen copy); precomputed: computed once before training, no reference in memory while training.",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, description="simpo: target reward margin gamma between chosen and rejected (TRL's default)."
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the desirable answers' loss (raise it when they are the fewer)."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the undesirable answers' loss (raise it when they are the fewer)."
    )
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="grpo: sampling, loss and rewards.")


class TrainConfig(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training set (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate, reached after warm-up.")
    lr_scheduler: str = Field("cosine", description="Any transformers scheduler name.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Warm-up as a share of all steps (used when warmup_steps is 0)."
    )
    warmup_steps: int = Field(
        0, ge=0, description="Steps rising linearly from 0 to learning_rate; above 0 it wins over warmup_ratio."
    )
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay of the optimizer.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    per_device_batch_size: int = Field(1, ge=1, description="Samples per forward pass on each device (train and eval).")
    gradient_accumulation: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower steps."
    )
    loss: Literal["chunked", "standard"] = Field(
        "chunked", description="chunked: cross-entropy without the full logits (Liger fused on GPU); standard: plain."
    )
    compile: bool = Field(False, description="torch.compile each decoder layer (first steps are slower).")
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor"] = Field(
        "adamw_torch",
        description="8bit: optimizer state in 8 bits (bitsandbytes); paged: state paged to CPU "
        "memory under GPU memory pressure (bitsandbytes, CUDA).",
    )
    logging_steps: int = Field(10, ge=1, description="Log loss and learning rate to metrics.jsonl every N steps.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: each save).")
    save_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimizer steps.")
    save_total_limit: int | None = Field(3, ge=1, description="Checkpoints kept.")
    seed: int = Field(42, description="Seed for model initialisation, LoRA weights and dropout.")
    resume: str | None = Field(None, description="auto (newest checkpoint of the run) or a checkpoint path.")
    preflight: bool = Field(
        True,
        description="Print the memory estimate and step count once the data is prepared, and stop in one line when "
        "the estimate exceeds the device's memory (TUNEFORGE_DEVICE_MEMORY_GB declares it).",
    )
    report_to: Literal["none", "tensorboard", "swanlab", "wandb", "mlflow"] = Field(
        "none", description="Experiment tracker (install the extra of the same name); metrics.jsonl is always written."
    )
    run_name: str | None = Field(None, description="The run's name in the tracker (default: the run folder's name).")
    project: str | None = Field(
        None,
        description="The tracker's project (W&B, SwanLab) or experiment (MLflow); default: the tracker's own.",
    )


class OutputConfig(Section):
    dir: str = Field(description="Run folder: config, adapter or model, checkpoints, metrics.")
    overwrite: bool = Field(False, description="Allow a fresh run in a folder that holds a finished run.")


class DistributedConfig(Section):
    nproc: int = Field(1, ge=1, description="Processes per node, one per GPU; above 1, training runs under torchrun.")
    nnodes: int = Field(1, ge=1, description="Machines taking part; every machine runs the same command.")
    node_rank: int = Field(0, ge=0, description="This machine's index; node 0 hosts the rendezvous and writes the run.")
    master_addr: str = Field("127.0.0.1", description="Address of node 0, reachable from every node.")
    master_port: int | None = Field(
        None, ge=1, le=65535, description="Rendezvous port on node 0 (default: free port on one node, 29500 on more)."
    )
    strategy: Literal["ddp", "deepspeed", "fsdp"] = Field(
        "ddp", description="ddp: a full copy per GPU; deepspeed: ZeRO sharding; fsdp: PyTorch fully sharded."
    )
    deepspeed: str = Field(
        "zero2", description="DeepSpeed preset (zero2, zero2_offload, zero3, zero3_offload) or a DeepSpeed JSON file."
    )
    fsdp_offload: bool = Field(False, description="FSDP: keep parameters, gradients and optimizer state in CPU memory.")
    timeout_minutes: int = Field(30, ge=1, description="How long one collective may wait before the run fails.")


class Config(Section):
    model: ModelConfig = Field(description="The base model and how it is loaded.")
    data: DataConfig = Field(description="Datasets, rendering and tokenizing.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="LoRA, QLoRA or full fine-tuning.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimizer, schedule, checkpoints.")
    output: OutputConfig = Field(description="Where the run folder goes.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Several GPUs or machines.")

    def fingerprint(self) -> str:
        """A short hash of the resolved config (used to check that all processes agree)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _cross_field_checks(self) -> Config:
        """Keys that are valid alone but contradict each other (or transformers) together."""
        objective = Objective.of(self.method)
        problems = _method_key_problems(self.method)
        problems += _ignored_keys(self.method, objective.ignored_keys(), "objective", objective.name)
        problems += _train_problems(self.train)
        if problem := objective.batch_problem(self.train.per_device_batch_size):
            problems.append(problem)
        if self.train.eval_steps is not None and self.data.val_size == 0:
            problems.append(
                f"train.eval_steps: {self.train.eval_steps} needs a validation split; set data.val_size "
                "(e.g. 0.05) or remove train.eval_steps"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


# Keys that only the LoRA methods (and, for the second set, only qlora) read; a continued adapter brings its own.
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules", "use_rslora", "use_dora", "modules_to_save")
QUANT_KEYS = ("bits", "quant_type", "double_quant", "quant_storage")


def _method_key_problems(method: MethodConfig) -> list[str]:
    """Keys set in the method section that its type ignores: a full fine-tune has no LoRA, lora no quantization."""
    ignored = {"full": (*LORA_KEYS, "adapter", *QUANT_KEYS), "lora": QUANT_KEYS, "qlora": ()}[method.type]
    problems = _ignored_keys(method, list(ignored), "type", method.type)
    if method.adapter is not None and method.type != "full":
        problems += _ignored_keys(method, list(LORA_KEYS), "adapter", method.adapter)
    return problems


def _ignored_keys(method: MethodConfig, keys: list[str], by: str, value: str) -> list[str]:
    """One problem naming the `keys` set away from their defaults, which method.`by`: `value` ignores."""
    # Compared with the defaults, not model_fields_set: a run's resolved config.yaml spells out every key.
    defaults = MethodConfig()
    keys = [k for k in keys if getattr(method, k) != getattr(defaults, k)]
    if not keys:
        return []
    return [
        f"method.{keys[0]}: {', '.join(keys)} {'has' if len(keys) == 1 else 'have'} no effect with method.{by}: "
        f"{value}; remove {'it' if len(keys) == 1 else 'them'} or change method.{by}"
    ]


def _train_problems(train: TrainConfig) -> list[str]:
    """warmup given twice, and scheduler names transformers does not know."""
    problems = []
    if train.warmup_steps and train.warmup_ratio:
        problems.append(
            f"train.warmup_steps: {train.warmup_steps} and train.warmup_ratio: {train.warmup_ratio} are both set; "
            "keep one of them"
        )
    if train.lr_scheduler != TrainConfig.model_fields["lr_scheduler"].default:
        # Imported only when the key is set: transformers (and torch) are heavy for `config check`.
        from transformers.trainer_utils import SchedulerType

        names = [s.value for s in SchedulerType]
        if train.lr_scheduler not in names:
            close = difflib.get_close_matches(train.lr_scheduler, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"train.lr_scheduler: unknown scheduler '{train.lr_scheduler}'; {hint}"
                f"expected one of {', '.join(names)}"
            )
    return problems


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that `loc` (a pydantic error location) points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
        else:
            return []
    return list(current.model_fields) if isinstance(current, type) else []


def _describe(err: dict[str, Any], source: str, root: type[BaseModel] | None = None) -> str:
    """One line for a pydantic error of a `root` (default Config) document read from `source`."""
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _valid_keys(root or Config, err["loc"]), n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in err['loc'][:-1] + (close[0],))}'?" if close else ""
        return f"{source}: unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    if err["type"] == "value_error" and not err["loc"]:
        # Cross-field checks (Config._cross_field_checks) name their keys themselves, one problem per line.
        return "\n".join(f"{source}: {line}" for line in str(err["ctx"]["error"]).splitlines())
    return f"{source}: {key}: {err['msg']} (got {err.get('input')!r})"


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a config mapping; every problem is reported at once, one line each."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation(exc, source)) from None


def describe_validation(exc: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """Every problem of a failed validation of a `root` (default Config) document, one line each."""
    return "\n".join(_describe(e, source, root) for e in exc.errors())


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}': expected key.sub=value, e.g. train.epochs=1")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(
                f"override '{item}': the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                f"quote it as a string ({key}='\"...\"') or fix the value"
            ) from None
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file and line on bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """The YAML mapping in `text` (a file's, an editor's), with a one-line error naming `source` and the line."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{source}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections (model, data, method, train, output)")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file. Relative data paths stay relative to the cwd."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, str(path))


# What a hub id can never end with, so a value ending so is a local file.
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".safetensors", ".gguf")


def looks_like_path(value: str) -> bool:
    """True for a value that can only be a local path, not a hub id (`name` or `org/name`)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix.lower() in LOCAL_SUFFIXES


def not_found(key: str, value: str) -> str:
    """'KEY: VALUE: not found', with the absolute path tried and what it was relative to when VALUE is relative."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return f"{key}: {value}: not found"
    return (
        f"{key}: {value}: not found (tried {path.resolve()}: relative paths are read from the current folder "
        f"{Path.cwd()}, not from the config file's folder)"
    )


def check_local_files(cfg: Config) -> None:
    """The local model folder and data files the config names exist (all problems at once)."""
    problems = []
    for key, value in (("model.name_or_path", cfg.model.name_or_path), ("model.tokenizer", cfg.model.tokenizer)):
        if value is not None and looks_like_path(value) and not Path(value).expanduser().exists():
            problems.append(not_found(key, value))
    if cfg.method.adapter is not None and not Path(cfg.method.adapter).expanduser().exists():
        problems.append(not_found("method.adapter", cfg.method.adapter))  # always local: a folder
    for i, ds in enumerate(cfg.data.datasets):
        local = ds.source == "local" or (ds.source == "auto" and looks_like_path(ds.path))
        if local and not Path(ds.path).expanduser().exists():
            problems.append(not_found(f"data.datasets.{i}.path", ds.path))
    if problems:
        raise UserError("\n".join(problems))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomic)."""
    from tuneforge.io import atomic_write_text

    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(path), text)
