"""An S3 endpoint that accepts connections but never answers fails in a bounded number of tries,
each bounded by the configured read timeout, with an error naming the key (issue 17: it took
4 min 22 s before)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import run_coldkeep


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts every connection, reads, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self.held.append(conn)  # kept open, never answered

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    server = BlackHole()
    yield server
    server.close()


def test_an_endpoint_that_never_answers_fails_after_two_bounded_tries(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    config = tmp_path / "coldkeep.toml"
    config.write_text(
        "[repository]\n"
        'url = "s3://bucket/repo"\n'
        f'endpoint_url = "http://127.0.0.1:{black_hole.port}"\n'
        "connect_timeout = 1\n"
        "read_timeout = 1\n"
    )
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "COLDKEEP_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = run_coldkeep(config, "snapshots", env=env, timeout=120)  # a hang guard, not a timing
    assert proc.returncode not in (0, 2), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no answer within 1 s (read_timeout), 2 tries" in errors[0]
    assert "read_timeout sets the limit" in proc.stderr
    assert black_hole.accepted == 2  # botocore's two tries, and no retries on top of them


def test_timeouts_are_validated_where_the_config_is_read(tmp_path: Path) -> None:
    config = tmp_path / "coldkeep.toml"
    config.write_text('[repository]\nurl = "s3://bucket/repo"\nread_timeout = 0\n')
    for args in (("config", "check"), ("pg", "wal-fetch", "000000010000000000000001", str(tmp_path / "x"))):
        proc = run_coldkeep(config, *args, env={"COLDKEEP_CACHE_DIR": str(tmp_path / "cache")})
        assert "repository.read_timeout" in proc.stderr, (args, proc.stderr)
