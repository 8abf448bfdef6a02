"""Text users control is printed as text, never read as rich markup (adversarial pass 2).

Human output renders tables and lines with rich, which reads ``[...]`` as markup.  A snapshot
label ``[/]`` (or a tag value, a restore target, a conversation message containing ``[/]``, which
chat text and code do) made the command die with ``internal error: MarkupError`` (exit 1) — for
`snapshots`, one such label makes every later listing fail — and a label holding an escape
sequence was written raw to the operator's terminal.  Invariant 7: bad input gets one line with a
hint, and here the input is not even bad.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from coldkeep.postgres.cluster import TempCluster
from tests.convsite import NOW, NOW_ENV, ConvSite
from tests.helpers import Site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path / "site")
    s.ok("repo", "init")
    return s


def test_labels_and_tags_with_brackets_list(site: Site, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    site.ok("backup", "--label", "[/]", "--tag", "note=[/x] [bold]", str(data))
    proc = site.run("snapshots", "--wide")  # 80 columns cut the tag (with an ellipsis)
    assert proc.returncode == 0, proc.stderr
    assert "[/]" in proc.stdout and "[/x] [bold]" in proc.stdout


def test_control_characters_of_a_label_do_not_reach_the_terminal(site: Site, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    site.ok("backup", "--label", "evil\x1b]0;owned\x07\x1b[2J", str(data))
    proc = site.run("snapshots")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout


def test_restore_into_a_directory_with_brackets(site: Site, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    site.ok("backup", str(data))
    target = tmp_path / "out[/]"
    proc = site.run("restore", "latest", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout


@pytest.mark.pg
def test_conversations_get_shows_a_message_with_brackets(pg_cluster: TempCluster, tmp_path: Path) -> None:
    conv = ConvSite(pg_cluster, tmp_path / "conv", batch_rows=300).create()
    session = uuid.uuid4()
    conv.sql(
        f"INSERT INTO {conv.table} (session_id, timestamp, speaker, content) VALUES (%s, %s, %s, %s)",
        (session, NOW - dt.timedelta(days=1), "user", "a[i]b[/]c"),
    )
    proc = conv.run("conversations", "get", "--session", str(session), env={**NOW_ENV, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "a[i]b[/]c" in proc.stdout  # not "abc" in italics
