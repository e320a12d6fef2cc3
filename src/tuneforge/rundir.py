"""The run folder: the one owner of everything a training run and its later stages write, and its manifest.

Layout (DESIGN.md invariants 5 and 7):

    RUN/config.yaml      resolved config
    RUN/run.json         manifest: base model (path, or hub id + resolved commit), method, chat-template hash,
                         config fingerprint, library versions, and per artifact what it was made from
    RUN/base/            the base model, only for `model.init: random` (its weights exist nowhere else)
    RUN/adapter/         LoRA / QLoRA adapter + tokenizer (method lora/qlora)
    RUN/model/           full model + tokenizer (method full)
    RUN/checkpoints/     Trainer checkpoints (checkpoint-N)
    RUN/metrics.jsonl    one JSON object per logging step
    RUN/progress.json    step, total steps, elapsed and ETA, rewritten at every step (what the web UI's bar shows)
    RUN/loss.png         the loss curve (preference objectives: RUN/rewards.png too)
    RUN/summary.json     steps, tokens seen, loss tokens, wall time, tokens/s
    RUN/logs/            tracker logs (TensorBoard)
    RUN/merged/          the adapter merged into its base (`merge` / `export`)
    RUN/gguf/RUN-TYPE.gguf, RUN/ollama/RUN-TYPE/Modelfile   (`export`)
    RUN/eval/SUITE/      evaluation reports (`eval --run`)
    RUN/jobs/KIND.json, KIND.log   the web UI's record of a `tuneforge KIND` job it ran here; jobs/train.yaml the
                         config it launched (webui/jobs.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError
from tuneforge.io import atomic_write_json, remove_stale_temporaries

if TYPE_CHECKING:
    from tuneforge.config import Config, ModelConfig

MANIFEST_VERSION = 1
# Libraries whose release changes what a run produces.
KEY_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "gguf")
# Files up to this size are fingerprinted by content; larger ones by size and modification time, so that checking
# a 60 GB merged model stays instant (an adapter, the usual source, is hashed).
_HASHED_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Run:
    """A run folder: every path in it, the resolved config (read once) and the manifest run.json."""

    root: Path

    config_file = property(lambda self: self.root / "config.yaml")
    manifest_file = property(lambda self: self.root / "run.json")
    base = property(lambda self: self.root / "base")
    adapter = property(lambda self: self.root / "adapter")
    model = property(lambda self: self.root / "model")
    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    progress = property(lambda self: self.root / "progress.json")
    loss_plot = property(lambda self: self.root / "loss.png")
    rewards_plot = property(lambda self: self.root / "rewards.png")
    summary = property(lambda self: self.root / "summary.json")
    logs = property(lambda self: self.root / "logs")
    merged = property(lambda self: self.root / "merged")
    gguf_dir = property(lambda self: self.root / "gguf")
    ollama_dir = property(lambda self: self.root / "ollama")
    eval_dir = property(lambda self: self.root / "eval")
    jobs = property(lambda self: self.root / "jobs")
    job_config = property(lambda self: self.jobs / "train.yaml")

    def job_status(self, kind: str) -> Path:
        """The web UI's state file of its last `kind` job here (train, eval, export)."""
        return self.jobs / f"{kind}.json"

    def job_log(self, kind: str) -> Path:
        """The output of the web UI's last `kind` job here."""
        return self.jobs / f"{kind}.log"

    @classmethod
    def open(cls, path: str | Path, flag: str = "--run") -> Run:
        """An existing run folder (checked: one line when `path` is not one)."""
        run = cls(Path(path))
        if not run.config_file.is_file():
            what = "does not exist" if not run.root.exists() else "is not a tuneforge run folder (no config.yaml)"
            raise UserError(f"{flag} {path}: {what}; pass the output.dir of a `tuneforge train` run")
        return run

    @property
    def name(self) -> str:
        """The run's name: its folder's."""
        return self.root.resolve().name

    def gguf(self, qtype: str) -> Path:
        """The GGUF file `export` writes for `qtype`."""
        return self.gguf_dir / f"{self.name}-{qtype}.gguf"

    def ollama(self, qtype: str) -> Path:
        """The folder of the Ollama Modelfile for the `qtype` GGUF."""
        return self.ollama_dir / f"{self.name}-{qtype}"

    @cached_property
    def cfg(self) -> Config:
        """The resolved config the run was trained with (read once)."""
        from tuneforge.config import load_config

        if not self.config_file.is_file():
            raise UserError(f"{self.root}: not a tuneforge run folder (no config.yaml)")
        return load_config(self.config_file)

    def base_model_config(self) -> ModelConfig:
        """The model section pointing at the base weights: the saved random base, or the configured model."""
        model = self.cfg.model
        if self.base.is_dir():
            return model.model_copy(update={"name_or_path": str(self.base), "init": "pretrained", "tokenizer": None})
        return model

    def base_dir(self) -> Path | None:
        """A local folder holding the base's config.json and weights (hub ids: the cached snapshot), or None."""
        model = self.base_model_config()
        if Path(model.name_or_path).is_dir():
            return Path(model.name_or_path)
        return _hub_snapshot(model)

    # --- the manifest ------------------------------------------------------------------------------------------

    def describe(self, cfg: Config, chat_template: str | None) -> dict[str, Any]:
        """The manifest's header for `cfg`: base, method, template hash, config fingerprint, versions."""
        from tuneforge import __version__

        model = cfg.model
        if model.init == "random":
            base = {"random": True, "config": model.name_or_path, "path": str(self.base)}
        elif Path(model.name_or_path).is_dir():
            base = {"path": str(Path(model.name_or_path).resolve())}
        else:
            snapshot = _hub_snapshot(model)
            base = {"hub": model.hub, "id": model.name_or_path, "revision": model.revision,
                    "commit": snapshot.name if snapshot else None}  # fmt: skip
        method: dict[str, Any] = {"type": cfg.method.type}
        if cfg.method.type == "qlora":
            method["quantization"] = {
                "bits": cfg.method.bits, "quant_type": cfg.method.quant_type, "double_quant": cfg.method.double_quant,
                "quant_storage": cfg.method.quant_storage,
            }  # fmt: skip
        versions = {"tuneforge": __version__} | {name: _version(name) for name in KEY_LIBRARIES}
        return {
            "manifest_version": MANIFEST_VERSION,
            "base": base,
            "method": method,
            "chat_template_sha256": _sha256_text(chat_template) if chat_template else None,
            "config_fingerprint": cfg.fingerprint(),
            "versions": versions,
            "artifacts": {},
        }

    def start(self, cfg: Config, chat_template: str | None, resumed: bool, continued: Path | None = None) -> None:
        """Write run.json for a training run starting (rank 0 only): a fresh one, or for a resumed run the new header
        with the artifacts already recorded (still valid until the adapter they were made from changes: stale_reason
        judges them at their next use). `continued`: the adapter folder method.adapter names, recorded by
        fingerprint when the run starts (a resume checks it against the folder: train/run.py)."""
        manifest = self.describe(cfg, chat_template)
        if resumed and self.manifest_file.is_file():
            old = self.manifest()
            manifest["artifacts"] = old["artifacts"]
            if "adapter" in old["method"]:  # what the run started from (the resume checked it is unchanged)
                manifest["method"]["adapter"] = old["method"]["adapter"]
        elif continued is not None:
            # Only a starting run can vouch for it (a manifest rebuilt later would fingerprint whatever is there now).
            manifest["method"]["adapter"] = {"path": str(continued.resolve()), "fingerprint": fingerprint(continued)}
        atomic_write_json(self.manifest_file, manifest)

    def manifest(self) -> dict[str, Any]:
        """run.json; for a run from an older tuneforge, one rebuilt from config.yaml (artifacts unrecorded)."""
        if self.manifest_file.is_file():
            try:
                return json.loads(self.manifest_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{self.manifest_file}:{exc.lineno}: not valid JSON ({exc.msg}); delete it and it is rebuilt "
                    "from config.yaml"
                ) from None
        return self.describe(self.cfg, self.chat_template())

    def chat_template(self) -> str | None:
        """The chat template the run's tokenizer carries (saved beside the adapter or model), if any."""
        for folder in (self.adapter, self.model, self.base):
            jinja = folder / "chat_template.jinja"
            if jinja.is_file():
                return jinja.read_text(encoding="utf-8")
            config = folder / "tokenizer_config.json"
            if config.is_file():
                template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
                if template:
                    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)
        return None

    def record_thinking(self, data_thinking: str, modes: list[str]) -> None:
        """Record the thinking modes the run trained in ("on", "off"; both when its data had both) and data.thinking."""
        manifest = self.manifest()
        manifest["thinking"] = {"data.thinking": data_thinking, "modes": modes}
        atomic_write_json(self.manifest_file, manifest)

    def trained_thinking(self) -> bool | None:
        """The thinking mode inference defaults to: the one mode the run trained in (None: both, or not recorded)."""
        modes = self.manifest().get("thinking", {}).get("modes", [])
        return modes == ["on"] if len(modes) == 1 else None

    def record(self, name: str, path: Path, made_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record artifact `name` at `path` (its fingerprint now) and what it was made from; returns the entry."""
        manifest = self.manifest()
        entry = {
            "path": os.path.relpath(path, self.root)
            if path.resolve().is_relative_to(self.root.resolve())
            else str(path),
            "fingerprint": fingerprint(path),
            "made_from": made_from or {},
        }
        manifest["artifacts"][name] = entry
        atomic_write_json(self.manifest_file, manifest)
        return entry

    def stale_reason(self, name: str, path: Path, made_from: dict[str, Any]) -> str | None:
        """Why `path` is not artifact `name` made from `made_from` (None: it is, unchanged since recorded)."""
        if not path.exists():
            return "missing"
        entry = self.manifest()["artifacts"].get(name)
        if entry is None:
            return "run.json does not say what it was made from"
        if entry["made_from"] != made_from:
            changed = sorted(k for k in made_from.keys() | entry["made_from"].keys()
                             if made_from.get(k) != entry["made_from"].get(k))  # fmt: skip
            return f"made from another {', '.join(changed)}"
        if entry["fingerprint"] != fingerprint(path):
            return "changed since it was made"
        return None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def owned(self) -> list[Path]:
        """Every path a run and its later stages write here (what `output.overwrite` clears), config.yaml aside.

        Of RUN/jobs/, the records of later stages' jobs (eval, export) only: the train job's are those of the very
        job that clears the folder (its config, state and log are written before it starts).
        """
        paths = [self.manifest_file, self.base, self.adapter, self.model, self.checkpoints, self.metrics,
                 self.progress, self.loss_plot, self.rewards_plot, self.summary, self.logs, self.merged,
                 self.gguf_dir, self.ollama_dir, self.eval_dir]  # fmt: skip
        paths += [p for p in sorted(self.jobs.glob("*")) if not p.name.startswith("train.")]
        if self.manifest_file.is_file():  # artifacts recorded later (eval reports) are the run's too
            recorded = (self.root / entry["path"] for entry in self.manifest()["artifacts"].values())
            paths += [p for p in recorded if p.resolve().is_relative_to(self.root.resolve()) and p not in paths]
        return paths

    def clear(self) -> None:
        """Remove everything the previous run left (for `output.overwrite`); files the run does not own stay."""
        for path in self.owned():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def clear_interrupted_writes(self) -> list[Path]:
        """Remove what killed writes left here (temporaries, unfinished checkpoints); returns what was cleared."""
        finals = [self.config_file, *self.owned()]
        # A checkpoint is staged as checkpoints/.checkpoint-N.staging.tmp (SFTTrainer._save_checkpoint).
        finals += {self.checkpoints / p.name.split(".")[1] for p in self.checkpoints.glob(".checkpoint-*")}
        return [cleared for final in finals for cleared in remove_stale_temporaries(final)]

    def latest_checkpoint(self) -> Path | None:
        """The newest `checkpoint-N` folder, if any."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def fingerprint(path: Path) -> str:
    """A hash of a file or folder: content for files up to 512 MiB, size and modification time for larger ones."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0{stat.st_size}\0".encode())
        if stat.st_size > _HASHED_BYTES:
            digest.update(str(stat.st_mtime_ns).encode())
            continue
        with file.open("rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _hub_snapshot(model: ModelConfig) -> Path | None:
    """The local snapshot folder of a Hugging Face hub model (its name is the resolved commit), without network."""
    if model.hub != "huggingface":
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                model.name_or_path, revision=model.revision, cache_dir=model.cache_dir, local_files_only=True
            )  # fmt: skip
        )
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
