"""Prometheus-side helpers for the monitoring tests: free ports, HTTP gets, a real Pushgateway
(Debian's prometheus-pushgateway) and `coldkeep exporter` processes on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import Site, need


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def wait_http(url: str, proc: subprocess.Popen[str] | None = None, tries: int = 300) -> None:
    for _ in range(tries):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{proc.args} exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@contextmanager
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway")
    need(binary, "prometheus-pushgateway (Debian package) is not installed")
    assert binary is not None
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/-/ready", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def exporter_process(site: Site, *args: str) -> Iterator[str]:
    """`coldkeep exporter --listen 127.0.0.1:0` for ``site``; yields its /metrics URL."""
    proc = site.popen("exporter", "--listen", "127.0.0.1:0", *args)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving http://" in line, line + proc.stderr.read()
        url = line.split("serving ", 1)[1].strip()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
