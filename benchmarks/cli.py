"""``python -m benchmarks``: aioreg against CNCF Distribution on this machine, or, with
``--target URL``, a load test of any running registry."""

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

from benchmarks import limits, loadtest, report, runner
from benchmarks.auth import Credentials
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
from benchmarks.units import parse_size

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
    parser.add_argument(
        "--json", type=Path, help=f"results file (default without --target: {DEFAULT_JSON})"
    )
    parser.add_argument("--csv", type=Path, help="results as CSV, one row per measurement")
    parser.add_argument(
        "--chart",
        type=Path,
        help="PNG chart (default without --target: next to the JSON; needs matplotlib)",
    )
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
    _load_arguments(parser)
    args = parser.parse_args(argv)
    if args.target:
        _check_load_arguments(parser, args)
        return args
    if args.json is None:
        args.json = DEFAULT_JSON
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


def _load_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "load-testing any registry (--target)",
        "With --target the local comparison is not run: the scenarios "
        f"({', '.join(loadtest.LOAD_SCENARIOS)}) run against each target instead.",
    )
    group.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="[LABEL=]URL",
        help="registry to load-test, e.g. zot=http://127.0.0.1:5000 (repeat to compare)",
    )
    group.add_argument("--user", help="user name for Basic credentials and the token flow")
    group.add_argument("--password", help="password (visible to ps; prefer --password-env)")
    group.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
    group.add_argument("--token", help="send this bearer token as is (no token flow)")
    group.add_argument("--insecure", action="store_true", help="skip TLS certificate checks")
    group.add_argument(
        loadtest.OWNERSHIP_FLAG,
        dest="i_own_this_registry",
        action="store_true",
        help="allow a target that is not on this machine (loopback)",
    )
    group.add_argument(
        "--concurrency", default="1,8,32", help="concurrent clients per level (comma-separated)"
    )
    group.add_argument("--duration", type=float, help="seconds per level (default 10)")
    group.add_argument("--requests", type=int, help="operations per level instead of a duration")
    group.add_argument(
        "--sizes", default="1MiB", help="blob sizes for push, pull and mixed (e.g. 64KiB,16MiB)"
    )
    group.add_argument(
        "--mix",
        default="pull=80,push=20",
        help="mixed scenario: weights of image pull, push and (manifest) head",
    )
    group.add_argument("--layers", type=int, default=4, help="layers per image (mixed scenario)")
    group.add_argument(
        "--repo-prefix",
        default="loadtest",
        help="repositories used: PREFIX/push, PREFIX/pull, PREFIX/manifest, PREFIX/mixed",
    )
    group.add_argument("--seed", type=int, default=1, help="seed of the random choices")


def _check_load_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turns the load-test arguments into ``args.targets`` and ``args.spec``."""
    only = [name for item in args.only for name in item.split(",") if name]
    unknown = [name for name in only if name not in loadtest.LOAD_SCENARIOS]
    if unknown:
        parser.error(
            f"unknown load scenario(s) {unknown}; choose from {list(loadtest.LOAD_SCENARIOS)}"
        )
    password = args.password
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            parser.error(f"--password-env: ${args.password_env} is not set")
    if password is not None and not args.user:
        parser.error("a password needs --user")
    if args.token and args.user:
        parser.error("give --token or --user/--password, not both")
    credentials = Credentials(args.user, password, args.token)
    try:
        targets = [loadtest.parse_target(t, credentials) for t in args.target]
        concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        mix = loadtest.parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        parser.error(f"targets need distinct labels (LABEL=URL): {labels}")
    if not concurrency or concurrency[0] < 1 or concurrency[-1] > 4096:
        parser.error("--concurrency: levels between 1 and 4096")
    if not sizes:
        parser.error("--sizes: at least one size")
    if args.duration is not None and args.requests is not None:
        parser.error("give --duration or --requests, not both")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.duration is not None and not 0 < args.duration <= 86400:
        parser.error("--duration must be in (0, 86400] seconds")
    if not 1 <= args.layers <= 100:
        parser.error("--layers must be between 1 and 100")
    args.targets = targets
    args.spec = loadtest.LoadSpec(
        scenarios=only or list(loadtest.DEFAULT_SCENARIOS),
        concurrency=concurrency,
        duration=10.0 if args.duration is None and args.requests is None else args.duration,
        requests=args.requests,
        sizes=sizes,
        mix=mix,
        layers=args.layers,
        repo_prefix=args.repo_prefix.strip("/"),
        verify_tls=not args.insecure,
        seed=args.seed,
    )


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
    if args.target:
        return loadtest.run(args, args.targets, args.spec)
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
    if args.csv is not None:
        report.write_csv(results, args.csv)
        print(f"csv: {args.csv}")
    print(f"results: {args.json} ({results['meta']['seconds']:.0f}s)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
