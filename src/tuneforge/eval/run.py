"""`tuneforge eval` end to end: what to load, one engine for both models, every task, the report.

    evaluate(EvalRequest(run="runs/mybot", suite="quick"))   # -> runs/mybot/eval/quick/

For a LoRA run (or --model with --adapter) the baseline is the same loaded model with the adapter off; for a
full fine-tune the run's base is loaded beside it. Models behind an OpenAI-compatible endpoint, another run as
the baseline, and vLLM are opened by eval/models.py. Finished items are cached in RUN/eval/.cache
(eval/cache.py); `nproc` > 1 spreads the items over that many processes, each with its own model (eval/shard.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.eval.cache import CHUNK, ItemCache
from tuneforge.eval.models import check_flags, open_models
from tuneforge.eval.report import summarize, write_report
from tuneforge.eval.suite import SuiteConfig, load_suite, suite_of_tasks
from tuneforge.eval.tasks import Context, Row, run_task
from tuneforge.infer.spec import thinking_for
from tuneforge.rundir import Run


@dataclass(frozen=True)
class EvalRequest:
    """The flags of `tuneforge eval`."""

    run: Path | None = None
    model: str | None = None
    adapter: Path | None = None
    tasks: list[str] | None = None
    suite: str | None = None
    baseline: str = "base"  # base | none | a run folder | an endpoint URL
    limit: int | None = None
    think: bool | None = None
    out: Path | None = None
    data_dir: Path | None = None
    endpoint: str | None = None
    served_model: str | None = None
    api_key_file: Path | None = None
    baseline_model: str | None = None
    engine: str = "transformers"  # transformers | vllm
    concurrency: int = 8  # requests in flight per endpoint
    nproc: int = 1  # processes (GPUs), each with its own model copy
    quantize: bool | None = None  # --load-in-4bit / --no-quantize (None: a QLoRA run's base as it was trained)


@dataclass
class Evaluation:
    """What an eval produced: the report folder, per-task results, every row."""

    out: Path
    results: dict[str, Any]
    rows: list[Row]


def _suite(request: EvalRequest) -> tuple[SuiteConfig, Path]:
    if request.tasks and request.suite:
        raise UserError("eval: pass --tasks or --suite, not both")
    if request.tasks:
        return suite_of_tasks(request.tasks), request.data_dir or Path.cwd()
    return load_suite(request.suite or "self-cognition", request.data_dir)


def evaluate(request: EvalRequest, log=print) -> Evaluation:
    """Run the suite on the fine-tuned model (and its baseline), write the report; returns where and what."""
    check_flags(request)
    suite, base_dir = _suite(request)
    run = Run.open(request.run) if request.run else None
    out = request.out or (run.eval_dir / suite.name if run else None)
    if out is None:
        raise UserError(
            "eval: --out DIR is needed with --model or --endpoint (with --run the report goes to RUN/eval/<suite>)"
        )

    opened = open_models(request, suite.tasks, log, run)
    log(f"eval: {', '.join(f'{role}={name}' for role, name in opened.served.items())}")
    # With --run the cache is RUN/eval/.cache whatever --out says; otherwise it sits beside the report folder.
    cache_file = (run.eval_dir if run else out.parent) / ".cache" / "items.jsonl"
    # Every worker gets a full chunk per request.
    cache = ItemCache(cache_file if opened.fingerprints else None, opened.fingerprints or {}, CHUNK * request.nproc)
    think, note = thinking_for(request.think, run.trained_thinking() if run else None, run.name if run else "")
    log(f"eval: {note}")
    ctx = Context(opened.engine, opened.names, think, base_dir, run.cfg if run else None, request.limit, cache)
    rows: list[Row] = []
    try:
        for task in suite.tasks:
            log(f"eval: {task.name} ({task.type})")
            rows += run_task(task, ctx)
    finally:
        opened.close()
    results = summarize(rows)
    think = {None: "template default", True: "on", False: "off"}[think]
    meta = {
        "suite": suite.name,
        "models": opened.served,
        "thinking": think,
        "decoding": "greedy",
        "limit": request.limit,
    }
    if request.endpoint:
        meta["endpoint"] = request.endpoint
    write_report(out, rows, results, meta)
    if run is not None and out.resolve().parent == run.eval_dir.resolve():
        # What the report was made from, so that the run says which adapter it judged (issue 13's manifest).
        source = {"models": opened.fingerprints or opened.served, "thinking": think, "limit": request.limit}
        run.record(f"eval/{out.name}", out, source)
    return Evaluation(out, results, rows)
