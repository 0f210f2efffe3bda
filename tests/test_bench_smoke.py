"""The benchmark suite runs end to end at a tiny scale and verifies what it moved.

No assertion on speed: only that every scenario ran, checked its answers and
landed in the JSON. Distribution is included only when ``docker-registry`` is
installed; nothing is installed by the test (``--no-install``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scenarios import BY_NAME, SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        "--scale",
        "0.002",
        "--repeat",
        "1",
        "--no-install",
        "--workdir",
        str(tmp_path),
        "--json",
        str(out),
        *args,
    ]
    if shutil.which("docker-registry") is None and "--no-distribution" not in args:
        argv.append("--no-distribution")
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc, json.loads(out.read_text())


def check_verified(result: dict, name: str) -> None:
    entry = result["scenarios"][name]
    if "skipped" in entry:  # only a missing tool may skip a whole scenario
        assert "not installed" in entry["skipped"], entry
        return
    registries = entry["registries"]
    assert registries["aioreg"]["status"] == "ok", registries["aioreg"]
    expected = ["aioreg"]
    if BY_NAME[name].aioreg_only:
        assert registries["distribution"]["status"] == "skipped", registries
    elif shutil.which("docker-registry"):
        expected.append("distribution")
    for registry in expected:
        reg = registries[registry]
        assert reg["status"] == "ok" and reg["verified"] is True, (name, registry, reg)
        assert len(reg["runs"]) == 1
        assert reg["median"], (name, registry)
        assert reg["median"]["peak_rss_mib"] > 0


def test_bench_runs_every_scenario_verified(tmp_path: Path) -> None:
    proc, result = run_bench(tmp_path, "--csv", str(tmp_path / "bench.csv"))
    assert set(result["scenarios"]) == {s.name for s in SCENARIOS}
    for scenario in SCENARIOS:
        check_verified(result, scenario.name)
    assert result["failed"] == []
    # The proxy scenario counted the upstream's GETs: one for 16 concurrent cold pullers.
    proxy = result["scenarios"]["proxy"]["registries"]["aioreg"]
    assert proxy["median"]["upstream_blob_x"] == 1.0
    assert proxy["runs"][0]["details"]["upstream_gets_for_16"] == 1
    limits = result["limits"]
    for key in ("sha256_MBps", "write_fsync_MBps", "loopback_tcp_MBps"):
        assert limits[key] > 0
    assert result["targets"], "targets are evaluated"
    assert "aioreg/dist" in proc.stdout  # the table was printed
    if shutil.which("docker-registry") is None:
        assert "not run (docker-registry not installed" in proc.stdout or "--no-distribution" in (
            proc.stdout
        )
    # The CSV holds the same medians, one row per scenario, registry and metric.
    with open(tmp_path / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    medians = result["scenarios"]["concurrent"]["registries"]["aioreg"]["median"]
    row = next(r for r in rows if r["scenario"] == "concurrent" and r["metric"] == "push_p99_s")
    assert row["registry"] == "aioreg" and float(row["median"]) == pytest.approx(
        medians["push_p99_s"], rel=1e-5
    )
    # The tmp work dir was cleaned up: only our JSON, CSV (and maybe the chart) remain.
    leftovers = {p.name for p in tmp_path.iterdir()} - {"bench.json", "bench.csv", "bench.png"}
    assert leftovers == set()


def test_missing_wrk_skips_get_rows_gracefully(tmp_path: Path) -> None:
    proc, result = run_bench(
        tmp_path, "--only", "manifest", "--without", "wrk", "--no-distribution"
    )
    assert set(result["scenarios"]) == {"manifest"}
    reg = result["scenarios"]["manifest"]["registries"]
    assert reg["aioreg"]["status"] == "ok" and reg["aioreg"]["verified"] is True
    assert reg["distribution"] == {"status": "skipped", "reason": "--no-distribution"}
    assert "distribution not run (--no-distribution)" in proc.stdout
    median = result["scenarios"]["manifest"]["registries"]["aioreg"]["median"]
    assert "get_rps" not in median and median["head_rps"] > 0
    assert "wrk not installed: manifest GET rows skipped" in proc.stdout


@pytest.mark.parametrize("bad", [["--scale", "0"], ["--repeat", "0"], ["--only", "nope"]])
def test_bad_arguments_are_refused(bad: list[str]) -> None:
    from benchmarks.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(bad)
