"""Output of a load-test run (``--target``): a table with one column group per target,
JSON, CSV, and a chart of throughput and p99 latency against concurrency."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from benchmarks.report import fmt, write_json

__all__ = [
    "CSV_FIELDS",
    "NO_MATPLOTLIB",
    "chart",
    "have_matplotlib",
    "table",
    "write_csv",
    "write_json",
]

CSV_FIELDS = (
    "target",
    "url",
    "scenario",
    "size",
    "size_bytes",
    "concurrency",
    "op",
    "count",
    "errors",
    "seconds",
    "rps",
    "MBps",
    "bytes",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "repository",
    "first_error",
)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("rps", "req/s"),
    ("MBps", "MB/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("errors", "err"),
)
NO_MATPLOTLIB = (
    "--chart needs matplotlib, which is not installed: pip install -r benchmarks/requirements.txt "
    "(or pip install 'aioreg[bench]'), or leave out --chart"
)


def _key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return (row["scenario"], row["size"], row["concurrency"], row["op"])


def table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """Scenario, size, clients and operation, then per target: req/s, MB/s, p50/p95/p99
    and errors. Operations named ``op:part`` are the requests inside an image operation."""
    by_key: dict[tuple[str, str, int, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(_key(row), {})[row["target"]] = row
    head = ["scenario", "size", "clients", "op"]
    lines: list[list[str]] = [head + [h for _ in labels for _, h in COLUMNS]]
    for key, per_target in by_key.items():
        cells = [key[0], key[1], str(key[2]), key[3]]
        for label in labels:
            got = per_target.get(label)
            for field, _ in COLUMNS:
                if got is None:
                    cells.append("-")
                elif field == "errors":
                    cells.append(str(got["errors"]))
                else:
                    cells.append(fmt(got[field]) if got["count"] else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    n = len(COLUMNS)
    title = [" " * w for w in widths[: len(head)]]
    for g, label in enumerate(labels):
        first = len(head) + g * n
        block = sum(widths[first : first + n]) + 2 * (n - 1)
        title.append(f" {label} ".center(block, "="))
    out = ["  ".join(title).rstrip()]
    for j, line in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(widths[i]) if i < len(head) else c.rjust(widths[i])
                for i, c in enumerate(line)
            ).rstrip()
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def chart(rows: list[dict[str, Any]], path: Path) -> str:
    """Throughput (MB/s, or req/s for operations that move no bytes) and p99 against the
    number of clients, one line per target and operation; returns what was drawn."""
    if not have_matplotlib():
        return NO_MATPLOTLIB
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if ":" in row["op"] or not row["count"]:
            continue  # the parts of image operations would crowd the chart
        name = f"{row['scenario']} {row['size']} {row['op']}".replace("  ", " ")
        series.setdefault((row["target"], name), []).append(row)
    fig, (ax_mb, ax_rps, ax_p99) = plt.subplots(1, 3, figsize=(16, 5))
    targets = sorted({t for t, _ in series})
    names = sorted({n for _, n in series})
    for (target, name), points in series.items():
        points.sort(key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in points]
        style = {
            "marker": "os^vD<>"[targets.index(target) % 7],
            "linestyle": ("-", "--", ":", "-.")[targets.index(target) % 4],
            "color": f"C{names.index(name) % 10}",
            "label": f"{target}: {name}",
        }
        if any(r["bytes"] for r in points):
            ax_mb.plot(xs, [r["MBps"] for r in points], **style)
        ax_rps.plot(xs, [r["rps"] for r in points], **style)
        ax_p99.plot(xs, [r["p99_ms"] for r in points], **style)
    for ax, ylabel, title in (
        (ax_mb, "MB/s", "Throughput (bytes)"),
        (ax_rps, "operations/s", "Throughput (operations)"),
        (ax_p99, "ms", "p99 latency"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    handles, legend = ax_rps.get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"Registry load test: {', '.join(targets)}")
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(handles) // 4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"
