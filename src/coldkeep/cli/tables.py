"""Tables for listings: as wide as the terminal (80 columns when not a terminal), long labels and
tags cut with …; everything in full with ``--wide``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

GAP = 3  # between columns: padding on both sides and the box's separator


def short_time(iso: str) -> str:
    """``2026-12-04T22:55:14.542688Z`` as ``2026-12-04 22:55`` (UTC, as stored); other text as it is."""
    if len(iso) >= 16 and iso[10:11] in ("T", " "):
        return iso[:10] + " " + iso[11:16]
    return iso


def show(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], *, wide: bool, flexible: set[str]
) -> None:
    """Print a table of ``rows`` whose fixed columns (ids, times, sizes) are never cut and whose
    ``flexible`` ones (labels, tags, hosts, paths) share what is left of the console's width,
    one line per row, cut with an ellipsis.  ``wide``: nothing is cut, however wide."""
    from rich import box
    from rich.table import Table

    need = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(columns)]
    widths: dict[int, int] = {}
    if not wide:
        fixed = sum(w for name, w in zip(columns, need, strict=True) if name not in flexible)
        room = console.width - fixed - GAP * (len(columns) - 1)
        wanted = {i: need[i] for i, name in enumerate(columns) if name in flexible}
        # the narrowest needs first: each takes what it needs or its equal share of what is left
        for k, (i, w) in enumerate(sorted(wanted.items(), key=lambda item: item[1])):
            share = max(3, room // (len(wanted) - k))  # at least "ab…"
            widths[i] = min(w, share)
            room -= widths[i]
    out = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False)
    for i, name in enumerate(columns):
        if i in widths:
            out.add_column(name, no_wrap=True, overflow="ellipsis", width=widths[i])
        else:
            out.add_column(name, no_wrap=True, overflow="fold" if wide else "ellipsis", min_width=need[i])
    for row in rows:
        out.add_row(*row)
    if not wide:
        console.print(out, soft_wrap=False)
        return
    width = console.width
    console.width = max(width, sum(need) + GAP * (len(columns) - 1))  # as wide as the content
    try:
        console.print(out, soft_wrap=False)
    finally:
        console.width = width
