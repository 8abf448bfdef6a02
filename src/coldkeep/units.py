"""Formatting sizes for people (kept apart so commands need not import the config models)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, as disks are sold: ``1.5 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover
