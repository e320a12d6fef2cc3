"""Multiple choice by likelihood: 200 CMMLU questions through `tuneforge eval`'s mcq task on the tiny Qwen3.

Times the whole task (prompt rendering, then one forward per question reading the four letters' log-probs through
`engine.next_token_logprobs`, batched), after one warm-up question; the target is <= 60 s on 2 CPU cores. The
baseline, in the same invocation, is the scoring it replaced on the same prompts: each letter as its own sequence
through `engine.score` (four forwards per question). No item cache here. Writes JSON. Not part of the tests.

    .venv/bin/python bench/eval_mcq.py --questions 200
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from machine import ASSETS, command, tiny_model_parser, tiny_model_setup

TARGET_S = 60.0


def main() -> None:
    parser = tiny_model_parser(__doc__, "eval_mcq")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--cmmlu", type=Path, default=ASSETS / "eval" / "cmmlu")
    args = parser.parse_args()
    host = tiny_model_setup(args, "transformers", "peft")

    from conftest import make_tiny_qwen3

    from tuneforge.eval.run import run_task
    from tuneforge.eval.suite import TaskConfig
    from tuneforge.eval.tasks import LETTERS, Context
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.io import atomic_write_json

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
        prompts = [row.prompt for row in rows]
        start = time.perf_counter()
        engine.score([p for p in prompts for _ in LETTERS], list(LETTERS) * len(prompts))
        per_letter_s = time.perf_counter() - start
        start = time.perf_counter()
        engine.next_token_logprobs(prompts, list(LETTERS))
        one_forward_s = time.perf_counter() - start
    accuracy = sum(r.score["accuracy"] for r in rows) / len(rows)
    result = {
        "benchmark": "eval_mcq",
        "command": command(),
        "machine": host,
        "questions": len(rows),
        "seconds": round(seconds, 2),
        "questions_per_s": round(len(rows) / seconds, 2),
        "target_s": TARGET_S,
        "ratio_to_target": round(seconds / TARGET_S, 3),
        "scoring_only": {
            "per_letter_s": round(per_letter_s, 2),
            "one_forward_s": round(one_forward_s, 2),
            "speedup": round(per_letter_s / one_forward_s, 2),
        },
        "accuracy": round(accuracy, 4),
    }
    print(
        f"{len(rows)} CMMLU questions by likelihood: {seconds:.1f} s ({result['questions_per_s']} q/s), "
        f"{result['ratio_to_target']}x the {TARGET_S:.0f} s target; accuracy {accuracy:.3f} (random weights)\n"
        f"scoring alone: 4 letters as 4 sequences {per_letter_s:.1f} s, one forward {one_forward_s:.1f} s "
        f"({result['scoring_only']['speedup']}x)"
    )
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
