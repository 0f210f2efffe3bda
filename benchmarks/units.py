"""Sizes and small statistics shared by the benchmark modules."""

from __future__ import annotations

import math
import statistics

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def mbps(size: int, seconds: float) -> float:
    """Decimal megabytes per second."""
    return size / seconds / 1e6 if seconds > 0 else math.inf
