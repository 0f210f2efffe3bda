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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
}


def parse_size(text: str) -> int:
    """``4096``, ``512KiB``, ``16MiB``, ``1GB``: a positive byte count."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("bikmg")
    unit = raw[len(number) :]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"unreadable size {text!r} (say 4096, 512KiB, 16MiB or 1GB)")
    value = int(float(number) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value


def size_label(size: int) -> str:
    """The shortest exact binary label: 1GiB, 16MiB, 512KiB, else bytes."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"
