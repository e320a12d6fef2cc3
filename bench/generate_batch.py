"""Offline batched generation: `engine.generate_batch` throughput by batch size, tiny Qwen3, real tokenizer.

The same prompts (mixed lengths) are answered greedily at each `--max-batch-size`; every level must give the same
answers as batch size 1 (batching is not allowed to change greedy output). Generated tokens/s and the ratio against
batch size 1 of the same invocation are printed and written as JSON. Each level runs `--repeats` times, in rounds
over all levels (so a disturbance of the machine falls on all of them alike), and its fastest run counts: one level
takes about a second here, within reach of any other process's burst. Not part of the tests.

    .venv/bin/python bench/generate_batch.py --batch-sizes 1 2 4 8 16 --prompts 32 --max-tokens 32
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from machine import command, tiny_model_parser, tiny_model_setup

TOPICS = ["the sea", "a dragon who counts", "Paris in spring", "prime numbers", "a quiet library", "rain"]


def prompts(count: int) -> list[str]:
    """`count` questions of mixed length (1 to 6 clauses), so that bucketing by length matters."""
    return [
        f"Question {i}: tell me about " + ", and then about ".join(TOPICS[: 1 + i % len(TOPICS)]) + "."
        for i in range(count)
    ]


def main() -> None:
    parser = tiny_model_parser(__doc__, "generate_batch")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="First is the baseline.")
    parser.add_argument("--prompts", type=int, default=32, help="Conversations answered at each batch size.")
    parser.add_argument("--max-tokens", type=int, default=32, help="New tokens per answer.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per batch size; the fastest counts.")
    args = parser.parse_args()
    host = tiny_model_setup(args, "transformers", "peft")

    from conftest import make_tiny_qwen3

    from tuneforge.data.conversation import Message
    from tuneforge.infer.backend import SamplingParams
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.io import atomic_write_json

    conversations = [[Message("user", text)] for text in prompts(args.prompts)]
    greedy = SamplingParams(max_new_tokens=args.max_tokens, temperature=0)
    walls: dict[int, list[float]] = {size: [] for size in args.batch_sizes}
    answers: dict[int, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = load_engine(resolve_spec(model=str(make_tiny_qwen3(Path(tmp) / "tiny-qwen3"))))
        engine.generate_batch(conversations[:2], greedy, max_batch_size=2)  # warm-up
        for _ in range(args.repeats):
            for size in args.batch_sizes:
                start = time.perf_counter()
                results = engine.generate_batch(conversations, greedy, max_batch_size=size)
                walls[size].append(time.perf_counter() - start)
                if answers.setdefault(size, results) != results:
                    raise SystemExit(f"batch size {size}: greedy answers differ between repeats")
    reference = answers[args.batch_sizes[0]]
    levels = []
    for size in args.batch_sizes:
        tokens = sum(r.completion_tokens for r in answers[size])
        levels.append(
            {
                "max_batch_size": size,
                "wall_s": round(min(walls[size]), 3),
                "wall_s_runs": [round(wall, 3) for wall in walls[size]],
                "tokens": tokens,
                "tokens_per_s": round(tokens / min(walls[size]), 1),
                "same_answers_as_baseline": answers[size] == reference,
            }
        )

    for level in levels:
        level["tokens_per_s_ratio"] = round(level["tokens_per_s"] / levels[0]["tokens_per_s"], 2)
    print("batch | wall s | tokens | tokens/s | ratio | same answers")
    for level in levels:
        print(
            f"{level['max_batch_size']} | {level['wall_s']} | {level['tokens']} | {level['tokens_per_s']} | "
            f"{level['tokens_per_s_ratio']} | {level['same_answers_as_baseline']}"
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "generate_batch",
            "command": command(),
            "machine": host,
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "baseline_batch_size": levels[0]["max_batch_size"],
            "levels": levels,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
