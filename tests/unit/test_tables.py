"""Listings fit the terminal: fixed columns whole, labels cut with …; --wide keeps everything."""

from __future__ import annotations

import io

from rich.console import Console

from coldkeep.cli.tables import short_time, show

PG_COLUMNS = ["id", "stop time", "tl", "size", "new", "verified", "tested", "label"]
ROW = ["3f2a9c1e", "2026-12-04 02:00", "1", "1.2 GB", "310.4 MB", "yes", "passed", "nightly " * 12]


def render(width: int, wide: bool) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, highlight=False, soft_wrap=True)
    show(console, PG_COLUMNS, [ROW, ROW], wide=wide, flexible={"label"})
    return buf.getvalue().splitlines()


def test_pg_backups_fit_80_columns_with_every_fixed_cell_whole() -> None:
    lines = render(80, wide=False)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split()[:7] == ["id", "stop", "time", "tl", "size", "new", "verified"]
    for cell in ROW[:7]:
        assert cell in lines[2]
    assert "…" in lines[2] and ROW[7].strip() not in lines[2]


def test_wide_keeps_every_cell_in_full() -> None:
    lines = render(80, wide=True)
    assert ROW[7].rstrip() in lines[2]
    assert max(len(line) for line in lines) > 80


def test_short_time() -> None:
    assert short_time("2026-12-04T22:55:14.542688Z") == "2026-12-04 22:55"
    assert short_time("2026-12-04 02:00:00+00:00") == "2026-12-04 02:00"
    assert short_time("-") == "-"
