"""The output embedding's product on CPU: `linear` against the engine's prepacked head (infer/cpu_head.py).

For each hidden size (64: the tests' tiny Qwen3; 1024: Qwen3-0.6B) and number of rows, the median time of
`linear(hidden, weight)` (the baseline, as transformers runs it) and of the engine's head, their ratio, and whether
the head's logits pick the same tokens. The vocabulary is Qwen3's 151,936 tokens; weights are random. Not part of
the tests.

    .venv/bin/python bench/cpu_head.py --hidden 64 1024 --rows 1 8 16
"""

from __future__ import annotations

import functools
import statistics
import time

from machine import command, tiny_model_parser, tiny_model_setup

VOCAB = 151_936


def median_ms(product, hidden, calls: int) -> float:  # noqa: ANN001 -- a callable on a tensor
    """Median wall time of `product(hidden)` in milliseconds, after two warm-up calls."""
    for _ in range(2):
        product(hidden)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        product(hidden)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = tiny_model_parser(__doc__, "cpu_head")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 1024], help="Hidden sizes.")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16], help="Rows (tokens) per product.")
    parser.add_argument("--calls", type=int, default=40, help="Timed calls per cell; the median counts.")
    args = parser.parse_args()
    host = tiny_model_setup(args)

    import torch

    from tuneforge.infer.cpu_head import pack_cpu_head

    cells = []
    generator = torch.Generator().manual_seed(0)
    for width in args.hidden:
        model = torch.nn.Module()
        model.head = torch.nn.Linear(width, VOCAB, bias=False)
        model.get_output_embeddings = lambda model=model: model.head
        linear = functools.partial(torch.nn.functional.linear, weight=model.head.weight)
        pack_cpu_head(model)
        for rows in args.rows:
            hidden = torch.randn(rows, width, generator=generator)
            with torch.inference_mode():
                baseline = median_ms(linear, hidden, args.calls)
                engine = median_ms(model.head, hidden, args.calls)
                same = model.head(hidden).argmax(-1).equal(linear(hidden).argmax(-1))
            cells.append(
                {
                    "hidden": width,
                    "rows": rows,
                    "linear_ms": round(baseline, 3),
                    "engine_ms": round(engine, 3),
                    "speedup": round(baseline / engine, 2),
                    "same_tokens": same,
                }
            )
            print(
                f"hidden {width} | rows {rows} | linear {baseline:.2f} ms | engine {engine:.2f} ms | "
                f"{baseline / engine:.2f}x | same tokens {same}"
            )

    from tuneforge.io import atomic_write_json

    atomic_write_json(
        args.out, {"benchmark": "cpu_head", "command": command(), "machine": host, "vocab": VOCAB, "cells": cells}
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
