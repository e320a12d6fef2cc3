"""Best-fit-decreasing placement of samples into rows of at most `capacity` tokens."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows of at most `capacity` tokens; every index appears exactly once.

    Longest first, each sample goes to the open row with the least room that still fits it, so rows
    come out nearly full and few. Ties keep index order, so the result is deterministic.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"samples {too_long[:5]} are longer than the row capacity {capacity}; packing never cuts")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: bisect finds the tightest fit
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[index]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([index])
            room, row = capacity - n, len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(index)
            room -= n
        bisect.insort(free, (room, row))
    return rows
