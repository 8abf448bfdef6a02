"""``pg wal-push --async`` pieces that need no server: markers, the command line, archive_command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldkeep.cli import entry
from coldkeep.lean import parse
from coldkeep.postgres import archiving, spool


def test_marker_acknowledges_only_matching_content_and_config(tmp_path: Path) -> None:
    config = tmp_path / "coldkeep.toml"
    config.write_text("[repository]\n")
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(os.urandom(1 << 20))
    root = spool.spool_root(str(wal), str(config))
    os.makedirs(root)
    ident = spool.config_identity(str(config))
    size, digest = spool.file_digest(str(wal))
    marker = Path(root) / f"{wal.name}.ok"
    marker.write_text(spool.marker_text(size, digest, ident, "wal/00000001/x"))
    assert spool.acknowledged(root, wal.name, str(wal), ident)
    assert not spool.acknowledged(root, wal.name, str(wal), ident + "x")  # config changed
    assert not marker.exists()  # a marker that does not match is dropped
    marker.write_text(spool.marker_text(size, digest, ident))
    data = bytearray(wal.read_bytes())
    data[12345] ^= 1
    wal.write_bytes(bytes(data))
    assert not spool.acknowledged(root, wal.name, str(wal), ident)  # other content
    marker.write_text("garbage")
    assert not spool.acknowledged(root, wal.name, str(wal), ident)
    assert not spool.acknowledged(root, "000000010000000000000002", str(wal), ident)  # no marker


def test_spool_roots_are_per_config(tmp_path: Path) -> None:
    a = spool.spool_root(str(tmp_path / "pg_wal" / "X"), "/etc/a.toml")
    b = spool.spool_root(str(tmp_path / "pg_wal" / "Y"), "/etc/b.toml")
    assert os.path.dirname(a) == os.path.dirname(b) == str(tmp_path / "pg_wal" / spool.SPOOL_DIR)
    assert a != b


@pytest.mark.parametrize(
    "args",
    [
        ["pg", "wal-push", "--async", "X"],  # no --config: the full path resolves it
        ["--config", "/nonexistent.toml", "pg", "wal-push", "--async", "X"],
        ["--config", "{c}", "--json", "pg", "wal-push", "--async", "X"],
        ["--config", "{c}", "pg", "wal-push", "X"],  # not async
        ["--config", "{c}", "pg", "wal-push", "--async", "--workers", "x", "X"],
        ["--config", "{c}", "pg", "wal-push", "--async", "--bogus", "X"],
        ["--config", "{c}", "pg", "wal-push", "--async", "X", "Y"],
    ],
)
def test_acknowledgement_path_leaves_other_command_lines_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """``cli/entry.py`` answers only ``--async`` pushes with an existing ``--config`` (and no
    ``--json``) from the spool; with the fast path off, everything else goes to click (``None``)."""
    config = tmp_path / "c.toml"
    config.write_text("")
    monkeypatch.setenv(entry.FASTPATH_ENV, "0")
    command = parse([a.replace("{c}", str(config)) for a in args])
    assert command is None or entry.run_lean(command) is None


def test_archive_command_async_and_kept_by_setup(tmp_path: Path) -> None:
    exe = tmp_path / "coldkeep"
    exe.write_text("#!/bin/sh\n")
    config = "/etc/coldkeep/coldkeep.toml"
    plain = archiving.archive_command(str(exe), config)
    asynchronous = archiving.archive_command(str(exe), config, async_push=True)
    with_workers = archiving.archive_command(str(exe), config, async_push=True, workers=3)
    assert plain.endswith("pg wal-push %p")
    assert asynchronous.endswith("pg wal-push --async %p")
    assert with_workers.endswith("pg wal-push --async --workers 3 %p")
    for command in (plain, asynchronous, with_workers):
        assert archiving.configured_executable(command, config) == str(exe)
    assert archiving.configured_executable(plain.replace("%p", "--bogus %p"), config) is None
    assert archiving.configured_executable(with_workers.replace("3", "x"), config) is None


def test_pusher_marker_digest_is_the_repository_digest() -> None:
    """The pusher hands its marker digest to ``put_named`` (no second hash): they must agree."""
    import blake3

    from coldkeep.repository.format import digest

    data = os.urandom(3 << 20)
    assert blake3.blake3(data, max_threads=1).hexdigest() == digest(data).hex()


def test_pusher_sleeps_on_events_and_wakes_for_a_new_ready_file(tmp_path: Path) -> None:
    """With a 30 s poll interval only inotify can make the pusher see a new ``.ready`` file
    within seconds; removing the spool directory stops it."""
    import threading

    wal_dir = tmp_path / "pg_wal"
    status = wal_dir / "archive_status"
    status.mkdir(parents=True)
    config = tmp_path / "c.toml"
    config.write_text("")
    root = tmp_path / "spool"
    root.mkdir()
    pushed: list[str] = []

    def push(name: str, path: str) -> tuple[int, str, str]:
        pushed.append(name)
        return 0, "00" * 32, "wal/x"

    pusher = spool.Pusher(str(root), str(wal_dir), spool.config_identity(str(config)), push, 2)
    assert spool._Waker([str(root), str(status)]).events  # Linux: inotify is there
    thread = threading.Thread(target=pusher.run, args=(str(config), 120.0, 30.0), daemon=True)
    thread.start()
    name = "000000010000000000000007"
    (status / f"{name}.ready").write_text("")
    marker = root / f"{name}.ok"
    for _ in range(200):
        if marker.exists():
            break
        thread.join(0.05)
    assert marker.exists() and pushed == [name]
    assert thread.is_alive()  # sleeping, not gone
    import shutil

    shutil.rmtree(root)
    thread.join(15)
    assert not thread.is_alive()
