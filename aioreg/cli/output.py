"""Console output of CLI commands: a one-line progress bar (stderr; plain lines when not a
TTY), the cells of their tables, sizes typed on the command line, and a reader that goes away."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

GIB = 1 << 30
SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GIB, "t": 1 << 40}


class Progress:
    def __init__(
        self,
        label: str,
        total_items: int,
        total_bytes: int = 0,
        out: TextIO = sys.stderr,
        unit: str = "blobs",
    ) -> None:
        self.label = label
        self.unit = unit
        self.total_items = total_items
        self.total_bytes = total_bytes
        self.items = 0
        self.bytes = 0
        self._out = out
        self._tty = out.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def advance(self, size: int = 0) -> None:
        self.items += 1
        self.bytes += size
        now = time.monotonic()
        if now - self._last >= (0.1 if self._tty else 5.0) or self.items == self.total_items:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self.total_bytes:
            fraction = self.bytes / self.total_bytes
        else:
            fraction = self.items / self.total_items if self.total_items else 1.0
        filled = int(fraction * 30)
        line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.items}/{self.total_items} {self.unit}"
        if self.total_bytes:
            line += f", {self.bytes / GIB:.2f}/{self.total_bytes / GIB:.2f} GiB"
        if not self.total_items:  # totals unknown (a stream): what has gone by so far
            line = f"{self.label}: {self.items} {self.unit}, {self.bytes / GIB:.2f} GiB"
        self._out.write(("\r" + line) if self._tty else (line + "\n"))
        self._out.flush()

    def done(self) -> None:
        elapsed = time.monotonic() - self._started
        if self._tty:
            self._out.write("\n")
        rate = self.bytes / elapsed / (1 << 20) if elapsed > 0 else 0.0
        speed = f" ({rate:.0f} MiB/s)" if self.total_bytes or not self.total_items else ""
        self._out.write(f"{self.label}: {self.items} {self.unit} in {elapsed:.1f}s{speed}\n")
        self._out.flush()


def format_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def parse_size(text: str) -> int | None:
    """``500M``, ``20G``, ``1.5GiB``, ``512`` (bytes) or ``none``; binary units."""
    if text.strip().lower() == "none":
        return None
    match = SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a size like 500M, 20G, or 'none'"
        )
    number, unit = match.groups()
    return int(float(number) * SIZE_UNITS[(unit or "").lower()])


def until_reader_leaves(command: Callable[[], int]) -> int:
    """Run ``command``; if stdout's reader went away, exit like a process killed by SIGPIPE.

    ``aioreg repo ls | head`` stops quietly, like other Unix tools.
    """
    try:
        code = command()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code
