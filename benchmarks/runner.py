"""Runs each scenario ``repeat`` times against every registry, alternating which goes
first, each run on a freshly started server that is stopped (and its data removed)
right after."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import traceback
from typing import Any

import aiohttp

from benchmarks.client import Client, VerifyError, new_session
from benchmarks.scenarios import RESOURCE_METRICS, Context, Scenario
from benchmarks.servers import Aioreg, ServerError, ServerKind
from benchmarks.units import MiB, median


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_timeout(scale: float) -> float:
    """Upper bound on one scenario run, so that a hung server cannot hang the bench."""
    return max(180.0, 1200.0 * scale)


async def run_once(ctx: Context, kind: ServerKind, scenario: Scenario) -> dict[str, Any]:
    """One scenario against one fresh server: metrics, or the error that failed it."""
    record: dict[str, Any] = {"ok": False}
    started = time.monotonic()
    if scenario.access_log and isinstance(kind, Aioreg):
        kind = kind.configured(kind.config, access_log=True)
    server = await asyncio.to_thread(kind.start, ctx.workdir)
    try:
        async with new_session() as session:
            client = Client(server.url, session)
            outcome = await asyncio.wait_for(
                scenario.run(ctx, server, client), run_timeout(ctx.scale)
            )
        server.check_alive()
        outcome.metrics["peak_rss_mib"] = server.peak_rss() / MiB
        outcome.metrics["end_rss_mib"] = server.rss() / MiB
        outcome.metrics["server_cpu_s"] = server.cpu_seconds()
        record.update(
            ok=True,
            metrics=outcome.metrics,
            details=outcome.details,
            notes=outcome.notes,
            series={k: {str(c): v for c, v in s.items()} for k, s in outcome.series.items()},
        )
    except (
        VerifyError,
        ServerError,
        AssertionError,
        aiohttp.ClientError,
        OSError,
        ValueError,
        subprocess.SubprocessError,
    ) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    except TimeoutError:
        record["error"] = f"timed out after {run_timeout(ctx.scale):.0f}s"
        record["traceback"] = traceback.format_exc()
    finally:
        code = await asyncio.to_thread(server.stop)
        record["seconds"] = time.monotonic() - started
        record["exit_code"] = code
    if record["ok"] and kind.name == "aioreg" and code != 0:
        record["ok"] = False
        record["error"] = f"aioreg exited {code} on SIGTERM (expected 0)"
    if not record["ok"]:
        record["server_log_tail"] = server.log_tail()
    return record


def _summary(scenario: Scenario, record: dict[str, Any]) -> str:
    if not record["ok"]:
        return f"FAILED: {record['error']}"
    first = scenario.metrics[0]
    value = record["metrics"].get(first.key)
    shown = f"{value:,.1f} {first.unit}" if isinstance(value, float) else "-"
    return f"{first.label} {shown}, peak RSS {record['metrics']['peak_rss_mib']:.0f} MiB"


async def run_all(
    ctx: Context,
    kinds: list[ServerKind],
    scenarios: list[Scenario],
    repeat: int,
    skipped: dict[str, str],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if any(s.big_blob and all(getattr(ctx, t) for t in s.needs) for s in scenarios):
        await asyncio.to_thread(lambda: ctx.big)  # written before any server starts
    for scenario in scenarios:
        entry: dict[str, Any] = {
            "title": scenario.title,
            "metrics": [
                {
                    "key": m.key,
                    "label": m.label,
                    "unit": m.unit,
                    "higher_is_better": m.higher_is_better,
                }
                for m in (*scenario.metrics, *RESOURCE_METRICS)
            ],
            "registries": {},
        }
        results[scenario.name] = entry
        missing = [tool for tool in scenario.needs if getattr(ctx, tool) is None]
        if missing:
            reason = f"{', '.join(missing)} not installed"
            _log(f"{scenario.name}: skipped ({reason})")
            entry["skipped"] = reason
            continue
        runs: dict[str, list[dict[str, Any]]] = {kind.name: [] for kind in kinds}
        if scenario.aioreg_only:
            for kind in kinds:
                if kind.name != "aioreg":
                    del runs[kind.name]
                    entry["registries"][kind.name] = {
                        "status": "skipped",
                        "reason": "aioreg only (no counterpart)",
                    }
        for r in range(repeat):
            order = kinds if r % 2 == 0 else list(reversed(kinds))
            order = [kind for kind in order if kind.name in runs]
            for kind in order:
                record = await run_once(ctx, kind, scenario)
                record["repeat"] = r + 1
                runs[kind.name].append(record)
                message = f"{scenario.name} #{r + 1} {kind.name}: {_summary(scenario, record)}"
                _log(message)
                if not record["ok"]:
                    print(
                        f"\n!!! {message}\n{record.get('traceback', '')}\n"
                        f"--- server log tail ---\n{record.get('server_log_tail', '')}\n",
                        file=sys.stderr,
                        flush=True,
                    )
        for name, records in runs.items():
            entry["registries"][name] = _aggregate(entry["metrics"], records)
    for name, reason in skipped.items():
        for entry in results.values():
            if "skipped" not in entry:
                entry["registries"][name] = {"status": "skipped", "reason": reason}
    return results


def _aggregate(metrics: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the successful runs; the registry fails if any run failed."""
    good = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    out: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "verified": bool(records) and not failed,
        "runs": records,
        "median": {},
        "notes": sorted({n for r in good for n in r.get("notes", [])}),
    }
    if failed:
        out["errors"] = [r["error"] for r in failed]
    for metric in metrics:
        values = [r["metrics"][metric["key"]] for r in good if metric["key"] in r["metrics"]]
        if values:
            out["median"][metric["key"]] = median(values)
    series: dict[str, dict[str, list[float]]] = {}
    for r in good:
        for key, points in r.get("series", {}).items():
            for conc, value in points.items():
                series.setdefault(key, {}).setdefault(conc, []).append(value)
    out["series"] = {k: {c: median(v) for c, v in s.items()} for k, s in series.items()}
    return out
