"""Quantities as people read them, shared by the CLI and the web console."""

from __future__ import annotations


def format_size(value: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 GiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"
