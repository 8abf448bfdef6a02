"""An S3 answer that stalls after it began is retried (adversarial pass on the S3 timeouts).

Observed: a GET whose body stopped arriving for ``read_timeout`` seconds in the middle — one
network hiccup during a long restore — raised urllib3's own ``ReadTimeoutError``, which no layer
translated: not retried (the RetryBackend retries transient storage errors only), and the command
died with "internal error: ReadTimeoutError".  A body that stalls (or breaks off) after the
answer began is a transient storage error: the GET is made again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coldkeep.storage import open_backend

BODY = bytes(range(256)) * 64


class _Stalling(BaseHTTPRequestHandler):
    """GET: the first answer sends half its body and stops (until the test ends); later ones
    are whole."""

    protocol_version = "HTTP/1.1"
    gets = 0
    release = threading.Event()

    def do_GET(self) -> None:
        type(self).gets += 1
        first = type(self).gets == 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("ETag", '"' + hashlib.md5(BODY).hexdigest() + '"')
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if first:
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.release.wait(60)  # the rest never comes while the client waits
            self.close_connection = True
            return
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling() -> Iterator[str]:
    _Stalling.gets = 0
    _Stalling.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Stalling.release.set()
    server.shutdown()
    server.server_close()


def test_a_get_whose_body_stalls_is_made_again(stalling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = open_backend("s3://bucket/repo", endpoint_url=stalling, region="us-east-1", read_timeout=1.0)
    try:
        assert backend.get("data/pack") == BODY
        assert _Stalling.gets == 2
    finally:
        backend.close()
