"""The `tuneforge synth` YAML: one typed section per concern, validated like the training config.

    docs: manuals/                      # file or folder (recursive)
    model: {endpoint: http://localhost:8000, name: Qwen3-8B, concurrency: 64}
    out: synth-out/

Unknown keys are errors naming the closest valid key (config.py's helpers); every default lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tuneforge.config import Section, apply_overrides, describe_validation, read_yaml
from tuneforge.errors import UserError

Step = Literal["questions", "questions_variation", "answer", "judge", "reasoning", "follow_up", "tags", "free_tags"]


class ModelAccess(Section):
    """An OpenAI-compatible endpoint (vLLM, SGLang, `tuneforge serve`, a hosted API) and how hard to use it, or a
    local model run in this process."""

    endpoint: str | None = Field(
        None, description="The server, e.g. http://localhost:8000 (/v1 is added when no path is given)."
    )
    name: str | None = Field(None, description="The model name on that server (with path: the served name).")
    path: str | None = Field(
        None,
        description="Instead of endpoint: a local model folder, hub id or training run, served in this process by "
        "the built-in engine for the duration of the run (structured output with the structured extra).",
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key [default: TUNEFORGE_API_KEY, OPENAI_API_KEY]."
    )
    api_key_file: str | None = Field(None, description="File whose first line is the API key (never on argv).")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Seconds before one request is abandoned and retried.")
    max_retries: int = Field(5, ge=0, description="Retries of a request on 429 (Retry-After honoured), 5xx, timeout.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of generation steps (judge: 0).")
    max_tokens: int = Field(2048, ge=1, description="Longest reply of one request (thinking included).")
    thinking: bool | None = Field(
        None, description="Ask the template for thinking on/off (chat_template_kwargs); None: the server's default."
    )
    structured_output: Literal["auto", "json_schema", "prompt"] = Field(
        "auto",
        description="auto: response_format json_schema, falling back to the prompt alone when the server refuses it.",
    )


class ChunkConfig(Section):
    tokens: int = Field(512, ge=32, description="Longest chunk in tokens of `tokenizer`.")
    overlap: int = Field(64, ge=0, description="Tokens shared by neighbouring chunks of one section.")
    min_tokens: int = Field(16, ge=1, description="Shorter sections are merged into the next one of their page.")
    tokenizer: str | None = Field(
        None, description="Local tokenizer folder of the target model; default: 1 token per CJK character or 4 others."
    )


class Variation(Section):
    """One style of question: who it is written for and in what form."""

    genre: str = Field(description="The form of the questions, e.g. exam question, customer support ticket.")
    audience: str = Field(description="Who asks, e.g. new employee, expert auditor.")


class GenerateConfig(Section):
    questions_per_chunk: int | None = Field(None, ge=1, description="Fixed count; default: from the chunk's length.")
    tokens_per_question: int = Field(128, ge=8, description="Default count: one question per this many tokens.")
    max_questions: int = Field(8, ge=1, description="Most questions asked of one chunk.")
    prompts: dict[Step, str] = Field(
        default_factory=dict,
        description="Override a step's prompt template: a file path or the text; fields {chunk}, {count}, {question}, "
        "{answer}, {language}, {genre}, {audience}, {history}, {tags} (docs/synth.md lists each step's).",
    )
    variations: list[Variation] = Field(
        default_factory=list,
        description="(genre, audience) pairs: a chunk's questions are asked once per variation; []: plain questions.",
    )
    reasoning: Literal["keep", "synthesize", "drop"] = Field(
        "keep",
        description="keep: the model's own reasoning; synthesize: also ask for it when an answer has none; drop: none.",
    )
    follow_ups: int = Field(0, ge=0, le=8, description="Follow-up user turns per pair, each answered from the chunk.")
    tags: list[str] | Literal["free"] | None = Field(
        None, description="Domain tags the model assigns to each pair: a list to choose from, or free; null: none."
    )
    language: Literal["auto", "en", "zh"] = Field("auto", description="Prompt language; auto: by the chunk's text.")


class QualityConfig(Section):
    judge: bool = Field(True, description="Rate each pair 1-10 and check that the chunk supports the answer.")
    judge_model: str | None = Field(None, description="The judge's model name on the same endpoint [default: model].")
    min_score: int = Field(7, ge=1, le=10, description="Pairs rated lower are filtered.")
    dedup_threshold: float | None = Field(
        0.8,
        gt=0,
        lt=1,
        description="Questions with estimated Jaccard similarity at least this are near-duplicates; null: keep all.",
    )


class WeakModel(Section):
    """The model whose answers are the rejected side of preference pairs."""

    name: str = Field(description="Its model name.")
    endpoint: str | None = Field(None, description="Its server [default: model.endpoint, with model's API key].")


class PreferenceConfig(Section):
    """Preference pairs for `method.objective: dpo` (OUT/preference.jsonl, messages_preference format)."""

    source: Literal["weak_model", "rated"] = Field(
        description="weak_model: chosen = model's answer, rejected = weak's; rated: a second sample of model, "
        "both rated by the judge, chosen = the higher score (ties dropped)."
    )
    weak: WeakModel | None = Field(None, description="The weak model (source: weak_model).")

    @model_validator(mode="after")
    def _weak_given(self) -> PreferenceConfig:
        if (self.source == "weak_model") != (self.weak is not None):
            raise ValueError("preference.weak is needed with source: weak_model and only there")
        return self


class OutputSection(Section):
    format: Literal["messages", "alpaca", "sharegpt"] = Field("messages", description="Record layout of the dataset.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of chunks held out (all their pairs) for eval.")
    seed: int = Field(0, description="Seed of the held-out chunk choice.")
    preview: int = Field(5, ge=0, description="Pairs shown in preview.md.")


class Budget(Section):
    max_tokens: int | None = Field(None, ge=1, description="Stop sending once this many tokens (in + out) are spent.")
    price_in: float | None = Field(None, ge=0, description="Price per million prompt tokens (report's cost).")
    price_out: float | None = Field(None, ge=0, description="Price per million completion tokens.")
    max_failure_rate: float = Field(
        0.05, ge=0, le=1, description="Exit non-zero when more than this share of requested pairs failed."
    )


class SynthConfig(Section):
    docs: str = Field(description="A document file or a folder of them (searched recursively).")
    out: str = Field(description="Output folder: dataset, eval suite, report, journal.")
    model: ModelAccess
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    output: OutputSection = Field(default_factory=OutputSection)
    budget: Budget = Field(default_factory=Budget)
    preference: PreferenceConfig | None = Field(None, description="Also build preference pairs; null: none.")

    @model_validator(mode="after")
    def _cross_field_checks(self) -> SynthConfig:
        if self.chunk.overlap >= self.chunk.tokens:
            raise ValueError(f"chunk.overlap ({self.chunk.overlap}) must be below chunk.tokens ({self.chunk.tokens})")
        if self.preference is not None and self.preference.source == "rated" and not self.quality.judge:
            raise ValueError("preference.source: rated needs quality.judge: true (the judge rates both samples)")
        if self.generate.follow_ups and self.output.format == "alpaca":
            raise ValueError("generate.follow_ups: alpaca holds one turn; use output.format messages or sharegpt")
        if (self.model.endpoint is None) == (self.model.path is None):
            raise ValueError("give model.endpoint (a server) or model.path (a local model run here), one of them")
        if self.model.endpoint is not None and self.model.name is None:
            raise ValueError("model.name: the model's name on model.endpoint is needed")
        local = self.model.path is not None
        if local and self.preference is not None and self.preference.weak and not self.preference.weak.endpoint:
            raise ValueError("preference.weak.endpoint: model.path serves one model here; serve the weak model too")
        if local and self.quality.judge_model:
            raise ValueError("quality.judge_model: model.path serves one model here; it is also the judge")
        return self

    def served_at(self, endpoint: str, name: str) -> SynthConfig:
        """This config with model.path served at `endpoint` as `name` (path kept: the server ends with the run)."""
        return self.model_copy(update={"model": self.model.model_copy(update={"endpoint": endpoint, "name": name})})


def validate_synth(raw: dict[str, Any], source: str) -> SynthConfig:
    """A synth config mapping validated; every problem reported at once, one line each."""
    try:
        return SynthConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation(exc, source, SynthConfig)) from None


def load_synth_config(path: str | Path | None, overrides: list[str]) -> SynthConfig:
    """The config file (or nothing: flags only) with `key.sub=value` overrides applied, validated."""
    raw = read_yaml(path) if path is not None else {}
    return validate_synth(apply_overrides(raw, overrides), str(path or "synth flags"))
