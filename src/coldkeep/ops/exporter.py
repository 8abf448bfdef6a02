"""``coldkeep exporter``: the metrics over HTTP, from memory, and the report page at ``/``.

A background thread recomputes the metrics (:func:`coldkeep.ops.metrics.read_inputs`: list the
run records, read the repository's figures and ``pg_stat_archiver``) every ``refresh`` seconds and
keeps the rendered exposition — and, from the same inputs, the HTML report
(:mod:`coldkeep.ops.report`) served at ``/``; a request only copies those bytes out, so it never
waits for the repository or PostgreSQL however many records there are.  A report that fails to
render leaves the metrics served (and the previous page).  The repository stays open between
refreshes (one passphrase derivation per process); when it cannot be opened the metrics say so
(``coldkeep_repository_up 0``) and the next refresh tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from coldkeep.config import Config
from coldkeep.errors import ColdkeepError, UsageError
from coldkeep.ops import metrics

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)

#: path → (content type, body): what a refresh renders
Pages = Mapping[str, tuple[str, bytes]]
HTML = "text/html; charset=utf-8"


class MetricsSource:
    """Recomputes the exposition for ``config``; keeps the repository open between refreshes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.repo: Repository | None = None
        self.page: bytes | None = None  # the last report rendered

    def render(self) -> bytes:
        """The exposition alone."""
        return self.render_all(page=False)["/metrics"][1]

    def render_all(self, page: bool = True) -> Pages:
        """``/metrics`` and (``page``) the report at ``/``, from one reading of the inputs."""
        from coldkeep.repository.setup import open_repository_section

        if self.repo is None:
            try:
                self.repo = open_repository_section(self.config.repository)
            except ColdkeepError as exc:
                log.warning("exporter: repository not opened: %s", exc.message)
        inputs = metrics.read_inputs(self.config, self.repo)
        pages = {"/metrics": (CONTENT_TYPE_LATEST, metrics.exposition(metrics.families(inputs)))}
        if page:
            from coldkeep.ops.report import render_report
            from coldkeep.ops.status import build

            try:
                self.page = render_report(self.config, build(self.config, inputs), self.repo).encode()
            except Exception as exc:  # the metrics are served all the same
                log.warning("exporter: report not refreshed: %s", exc)
            if self.page is not None:
                pages["/"] = (HTML, self.page)
        return pages

    def close(self) -> None:
        if self.repo is not None:
            self.repo.close()
            self.repo = None


class Exporter:
    """An HTTP server answering ``GET /metrics`` with the last rendered exposition."""

    def __init__(self, render: Callable[[], bytes | Pages], listen: str, refresh_s: float) -> None:
        """``render``: the exposition (served at ``/metrics`` and ``/``), or every page by path."""
        host, port = parse_listen(listen)
        self.render = render
        self.refresh_s = refresh_s
        self.body = b""
        self.pages: Pages = {}
        self.refreshes = 0
        self._stop = threading.Event()
        self._refreshed = threading.Condition()
        self.refresh()  # the first scrape already has figures
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pages = exporter.pages  # one reference: a refresh replaces the mapping whole
                path = self.path.split("?")[0]
                if path == "/" and "/" not in pages:
                    path = "/metrics"
                if path not in pages:
                    self.send_error(404)
                    return
                content_type, body = pages[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if content_type == HTML:
                    from coldkeep.ops.report import CSP

                    self.send_header("Content-Security-Policy", CSP)
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
            out = self.render()
        except Exception as exc:  # keep serving the last figures
            log.warning("exporter: metrics not refreshed: %s", exc)
            return
        pages = {"/metrics": (CONTENT_TYPE_LATEST, out)} if isinstance(out, bytes) else dict(out)
        with self._refreshed:
            self.pages = pages
            self.body = pages["/metrics"][1]
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
