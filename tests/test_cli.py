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
