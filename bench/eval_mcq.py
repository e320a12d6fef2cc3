"""Multiple choice by likelihood: 200 CMMLU questions through `tuneforge eval`'s mcq task on the tiny Qwen3.

Times the whole task (prompt rendering, 4 letters scored per question through `engine.score`, batched), after
one warm-up question; the target is <= 60 s on 2 CPU cores. Writes JSON. Not part of the tests.

    .venv/bin/python bench/eval_mcq.py --questions 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Qwen3 the tests use (conftest.make_tiny_qwen3)
TARGET_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--cmmlu", type=Path, default=ROOT.parent / "shared" / "assets" / "eval" / "cmmlu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_mcq.json")
    args = parser.parse_args()

    import torch
    from conftest import make_tiny_qwen3

    from tuneforge.eval.suite import TaskConfig
    from tuneforge.eval.tasks import Context, run_task
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    host = {**machine("transformers", "peft"), "torch_threads": str(torch.get_num_threads())}
    task = TaskConfig(name="cmmlu", type="mcq", path=str(args.cmmlu), layout="cmmlu")
    with tempfile.TemporaryDirectory() as tmp:
        spec = resolve_spec(model=str(make_tiny_qwen3(Path(tmp) / "tiny-qwen3")))
        engine = load_engine(spec)
        ctx = Context(engine, {"tuned": spec.name}, False, Path.cwd(), limit=1)
        run_task(task, ctx)  # warm-up
        ctx.limit = args.questions
        start = time.perf_counter()
        rows = run_task(task, ctx)
        seconds = time.perf_counter() - start
    accuracy = sum(r.score["accuracy"] for r in rows) / len(rows)
    result = {
        "host": host,
        "questions": len(rows),
        "seconds": round(seconds, 2),
        "questions_per_s": round(len(rows) / seconds, 2),
        "target_s": TARGET_S,
        "ratio_to_target": round(seconds / TARGET_S, 3),
        "accuracy": round(accuracy, 4),
    }
    print(
        f"{len(rows)} CMMLU questions by likelihood: {seconds:.1f} s ({result['questions_per_s']} q/s), "
        f"{result['ratio_to_target']}x the {TARGET_S:.0f} s target; accuracy {accuracy:.3f} (random weights)"
    )
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
