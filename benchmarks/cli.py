"""``python -m benchmarks``: aioreg against CNCF Distribution on this machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import limits, report, runner
from benchmarks.scenarios import BY_NAME, SCENARIOS, Context
from benchmarks.servers import (
    Aioreg,
    Distribution,
    ServerError,
    ServerKind,
    ensure_tool,
    kill_all,
    snapshot_revision,
    source_state,
)

DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per scenario and registry (median)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="size factor (1.0: 1 GiB blob, 10,000 tags, ...)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help=f"run only these (repeatable or comma-separated): {', '.join(BY_NAME)}",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--chart", type=Path, help="PNG chart (default: next to the JSON)")
    parser.add_argument("--no-distribution", action="store_true", help="benchmark aioreg alone")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never apt-get install docker-registry or wrk when they are missing",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=["curl", "wrk"],
        help="act as if this tool were not installed (its rows are skipped)",
    )
    parser.add_argument(
        "--aioreg-rev",
        metavar="REV",
        help="benchmark aioreg as committed at this git revision (default: the working tree)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where temporary data directories go (default: $TMPDIR)"
    )
    parser.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="processes of the aiohttp HEAD load generator (1 measured best on 2 cores)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 < args.scale <= 4:
        parser.error("--scale must be in (0, 4]")
    only = [name for item in args.only for name in item.split(",") if name]
    unknown = [name for name in only if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(BY_NAME)}")
    args.only = only
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def _run(
    ctx: Context, kinds: list[ServerKind], args: argparse.Namespace, skipped: dict[str, str]
) -> dict[str, Any]:
    selected = [BY_NAME[n] for n in args.only] if args.only else list(SCENARIOS)
    return await runner.run_all(ctx, kinds, selected, args.repeat, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.time()
    install = not args.no_install

    curl = None if "curl" in args.without else shutil.which("curl")
    wrk = None if "wrk" in args.without else ensure_tool("wrk", "wrk", install)
    workdir = Path(tempfile.mkdtemp(prefix="aioreg-bench-", dir=args.workdir))
    aioreg_source: dict[str, object] = source_state(REPO)
    try:
        if args.aioreg_rev:
            src = workdir / "aioreg-src"
            aioreg_source["benchmarked"] = snapshot_revision(REPO, args.aioreg_rev, src)
            aioreg = Aioreg(src)
        else:
            aioreg_source["benchmarked"] = "working tree"
            aioreg = Aioreg()
        aioreg_source["package_dir"] = aioreg.package_dir()
    except (subprocess.CalledProcessError, ServerError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"[bench] cannot prepare aioreg: {exc}", file=sys.stderr)
        return 2
    print(f"[bench] aioreg from {aioreg_source['package_dir']}", file=sys.stderr)
    kinds: list[ServerKind] = [aioreg]
    skipped: dict[str, str] = {}
    if args.no_distribution:
        skipped["distribution"] = "--no-distribution"
    else:
        binary = ensure_tool("docker-registry", "docker-registry", install)
        if binary is None:
            skipped["distribution"] = "docker-registry not installed"
            print("[bench] docker-registry not found: aioreg only", file=sys.stderr)
        else:
            kinds.append(Distribution(binary))

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(
            f"[bench] warning: load average {load_before[0]:.2f} before the run; other processes "
            "compete for the CPU and the numbers will be noisy",
            file=sys.stderr,
        )
    try:
        print(f"[bench] work dir {workdir}; measuring machine limits", file=sys.stderr, flush=True)
        machine = limits.measure(workdir, args.scale)
        ctx = Context(workdir, args.scale, curl, wrk, args.loadgen_procs, aioreg)
        try:
            import uvloop

            scenarios = uvloop.run(_run(ctx, kinds, args, skipped))
        except ImportError:
            scenarios = asyncio.run(_run(ctx, kinds, args, skipped))
        versions = {kind.name: kind.version() for kind in kinds}
    except KeyboardInterrupt:
        print("[bench] interrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)

    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "repeat": args.repeat,
            "scale": args.scale,
            "only": args.only,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
            "versions": versions,
            "aioreg_source": aioreg_source,
            "tools": {"curl": curl, "wrk": wrk},
            "loadgen_procs": args.loadgen_procs,
        },
        "limits": machine,
        "scenarios": scenarios,
    }
    results["targets"] = report.targets(results)
    failed = [
        f"{name}/{registry}"
        for name, entry in scenarios.items()
        for registry, reg in entry.get("registries", {}).items()
        if reg["status"] == "failed"
    ]
    results["failed"] = failed
    chart_path = args.chart or args.json.with_suffix(".png")
    results["chart"] = str(chart_path)
    report.write_json(results, args.json)
    print()
    print(report.table(results))
    print()
    print(report.targets_text(results["targets"]))
    print()
    message = report.chart(results, chart_path)
    if not message.startswith("chart:"):
        results["chart"] = None
        report.write_json(results, args.json)
    print(message)
    print(f"results: {args.json} ({results['meta']['seconds']:.0f}s)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
