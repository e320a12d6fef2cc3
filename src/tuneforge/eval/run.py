"""`tuneforge eval` end to end: what to load, one engine for both models, every task, the report.

    evaluate(EvalRequest(run="runs/mybot", suite="quick"))   # -> runs/mybot/eval/quick/

For a LoRA run (or --model with --adapter) the baseline is the same loaded model with the adapter off; for a
full fine-tune the run's base is loaded beside it. Models behind an OpenAI-compatible endpoint, another run as
the baseline, and vLLM are opened by eval/models.py. Finished items are cached in RUN/eval/.cache
(infer/cache.py); `nproc` > 1 spreads the items over that many processes, each with its own model (infer/shard.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.eval.judge import run_judge
from tuneforge.eval.models import check_flags, open_models
from tuneforge.eval.report import summarize, write_report
from tuneforge.eval.request import EvalRequest
from tuneforge.eval.suite import SuiteConfig, TaskConfig, load_suite, suite_of_tasks
from tuneforge.eval.tasks import RUNNERS, Context, Row
from tuneforge.infer.cache import CHUNK, ItemCache
from tuneforge.infer.spec import thinking_for
from tuneforge.rundir import Run


@dataclass
class Evaluation:
    """What an eval produced: the report folder, per-task results, every row."""

    out: Path
    results: dict[str, Any]
    rows: list[Row]


def run_task(task: TaskConfig, ctx: Context) -> list[Row]:
    """All rows of one task, for every model in ctx.models."""
    return run_judge(task, ctx) if task.type == "judge" else RUNNERS[task.type](task, ctx)


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
