"""``coldkeep exporter``: the metrics over HTTP, from memory.

A background thread recomputes the metrics (:func:`coldkeep.ops.metrics.read_inputs`: list the
run records, read the repository's figures and ``pg_stat_archiver``) every ``refresh`` seconds and
keeps the rendered exposition; a scrape only copies those bytes out, so it never waits for the
repository or PostgreSQL however many records there are.  The repository stays open between
refreshes (one passphrase derivation per process); when it cannot be opened the metrics say so
(``coldkeep_repository_up 0``) and the next refresh tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from coldkeep.config import Config
from coldkeep.errors import ColdkeepError, UsageError
from coldkeep.ops import metrics

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)


class MetricsSource:
    """Recomputes the exposition for ``config``; keeps the repository open between refreshes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.repo: Repository | None = None

    def render(self) -> bytes:
        from coldkeep.repository.setup import open_repository_section

        if self.repo is None:
            try:
                self.repo = open_repository_section(self.config.repository)
            except ColdkeepError as exc:
                log.warning("exporter: repository not opened: %s", exc.message)
        return metrics.exposition(metrics.families(metrics.read_inputs(self.config, self.repo)))

    def close(self) -> None:
        if self.repo is not None:
            self.repo.close()
            self.repo = None


class Exporter:
    """An HTTP server answering ``GET /metrics`` with the last rendered exposition."""

    def __init__(self, render: Callable[[], bytes], listen: str, refresh_s: float) -> None:
        host, port = parse_listen(listen)
        self.render = render
        self.refresh_s = refresh_s
        self.body = b""
        self.refreshes = 0
        self._stop = threading.Event()
        self._refreshed = threading.Condition()
        self.refresh()  # the first scrape already has figures
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = exporter.body
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("exporter: " + format, *args)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}",
                             hint="choose another --listen address or port") from None  # fmt: skip
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self._refresh_loop, name="coldkeep-exporter", daemon=True)

    def refresh(self) -> None:
        try:
            body = self.render()
        except Exception as exc:  # keep serving the last figures
            log.warning("exporter: metrics not refreshed: %s", exc)
            return
        with self._refreshed:
            self.body = body
            self.refreshes += 1
            self._refreshed.notify_all()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def serve_forever(self) -> None:
        self._thread.start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.server.server_close()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="write e.g. 127.0.0.1:9788")
    return host, int(port)
