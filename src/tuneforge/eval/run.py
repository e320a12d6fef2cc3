"""`tuneforge eval` end to end: what to load, one engine for both models, every task, the report.

    evaluate(EvalRequest(run="runs/mybot", suite="quick"))   # -> runs/mybot/eval/quick/

For a LoRA run (or --model with --adapter) the baseline is the same loaded model with the adapter off; for a
full fine-tune the run's base is loaded beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.eval.report import summarize, write_report
from tuneforge.eval.suite import SuiteConfig, load_suite, suite_of_tasks
from tuneforge.eval.tasks import Context, Row, run_task
from tuneforge.rundir import Run

TUNED_ADAPTER = "tuned"  # served name of an --adapter given with --model


@dataclass(frozen=True)
class EvalRequest:
    """The flags of `tuneforge eval`."""

    run: Path | None = None
    model: str | None = None
    adapter: Path | None = None
    tasks: list[str] | None = None
    suite: str | None = None
    baseline: str = "base"  # base | none
    limit: int | None = None
    think: bool | None = None
    out: Path | None = None
    data_dir: Path | None = None


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
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec

    if request.baseline not in ("base", "none"):
        raise UserError(f"--baseline {request.baseline}: expected base or none")
    if request.run is None and request.model is None:
        raise UserError("eval: pass --run RUN_DIR, or --model DIR [--adapter DIR]")
    if request.run is not None and request.adapter is not None:
        raise UserError("eval: --adapter goes with --model; a run brings its own adapter")
    suite, base_dir = _suite(request)
    run = Run.open(request.run) if request.run else None
    out = request.out or (run.eval_dir / suite.name if run else None)
    if out is None:
        raise UserError("eval: --out DIR is needed with --model (with --run the report goes to RUN/eval/<suite>)")

    run_config = run.cfg if run else None
    adapters = {TUNED_ADAPTER: request.adapter} if request.adapter else None
    spec = resolve_spec(
        model=request.model if request.run is None else None,
        run=run,
        adapters=adapters,
        with_base=request.baseline == "base",
    )
    models = {"baseline": spec.names[0], "tuned": spec.names[-1]} if len(spec.names) > 1 else {"tuned": spec.names[0]}
    if request.baseline == "none":
        models.pop("baseline", None)
    log(f"eval: loading {', '.join(f'{role}={name}' for role, name in models.items())}")
    engine = load_engine(spec)
    ctx = Context(engine, models, request.think, base_dir, run_config, request.limit)
    rows: list[Row] = []
    for task in suite.tasks:
        log(f"eval: {task.name} ({task.type})")
        rows += run_task(task, ctx)
    results = summarize(rows)
    think = {None: "template default", True: "on", False: "off"}[request.think]
    meta = {"suite": suite.name, "models": models, "thinking": think, "decoding": "greedy", "limit": request.limit}
    write_report(out, rows, results, meta)
    return Evaluation(out, results, rows)
