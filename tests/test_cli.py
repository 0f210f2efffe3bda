"""The management CLI as a user runs it: bad arguments and closed pipes end in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def aioreg(
    data: Path, *args: str, stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioreg", *args, "--data", str(data)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("size", ["20X", "abc", "", "G", "-5", "1e400", "nan", "inf", "10.5.1M"])
def test_quota_with_a_bad_size_is_a_usage_error(tmp_path: Path, size: str) -> None:
    result = aioreg(tmp_path / "d", "quota", "team", size)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aioreg quota: ") and f"invalid size {size!r}" in lines[0], lines


@pytest.mark.parametrize("size", ["1M", "20G", "1.5GiB", "512", "0", "2 kb", "none"])
def test_quota_sizes_that_parse(tmp_path: Path, size: str) -> None:
    # No namespace "team" exists yet: the size parsed and the registry answered.
    result = aioreg(tmp_path / "d", "quota", "team", size)
    assert result.returncode == 1
    assert result.stderr.strip() == "aioreg: no namespace team"


@pytest.mark.parametrize(
    "args", [["repo", "ls"], ["usage"], ["retention", "preview"], ["gc", "--dry-run"]]
)
def test_closed_stdout_ends_quietly_like_other_unix_tools(tmp_path: Path, args: list[str]) -> None:
    """``aioreg repo ls | head``: the reader went away, so stop with 141, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        result = aioreg(tmp_path / "d", *args, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 128 + 13, result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr


# -- the Makefile: the README's first command ---------------------------------

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_installs_only_the_runtime_into_its_own_venv(tmp_path: Path) -> None:
    """PEP 668: nothing goes into the system Python; the server needs no test tools."""
    venv = tmp_path / "v"
    result = make("-n", "run", f"VENV={venv}", "PYTHON=python3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"python3 -m venv {venv} ")
    installs = [line for line in lines if "pip install" in line]
    assert installs == [f"{venv}/bin/python -m pip install -q -e ."]
    assert lines[-1] == f"{venv}/bin/aioreg serve --listen 0.0.0.0:5000 --data ./data"
    assert not venv.exists()  # -n: nothing was run


def test_make_test_adds_the_test_tools_to_the_same_venv(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    result = make("-n", "test", f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert installs == [
        f"{venv}/bin/python -m pip install -q -e .",
        f"{venv}/bin/python -m pip install -q -e '.[test]'",
    ]
    assert result.stdout.splitlines()[-1].startswith(f"{venv}/bin/python -m pytest ")


def test_make_run_without_the_venv_module_says_what_to_install(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    result = make("run", f"VENV={venv}", "PYTHON=false", "APT_GET=/nonexistent/apt-get")
    assert result.returncode != 0
    assert "apt-get install python3-venv" in result.stderr, result.stderr
    assert not venv.exists()
