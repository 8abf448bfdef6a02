"""``coldkeep pg receive-wal``: the streaming WAL receiver (a long-running service).

Mounted into the ``pg`` group by :mod:`coldkeep.cli.pg_cmd`.  The work is in
:mod:`coldkeep.postgres.receive`; this module parses, installs the signal handlers and prints one
line per event (``--json``: one JSON object per line on stdout).

Exit codes: 0 stopped by SIGTERM/SIGINT (or ``--once`` and pg_receivewal ended normally), 1 failed
(``--once`` and pg_receivewal failed, no WAL lineage yet), 2 usage or configuration, 3 integrity
(a streamed segment differs from the archived one or is not what its name says).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.params import FiniteRange


def _human(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "start":
        return (f"receive-wal: spool {event['spool']}, slot {event['slot']}, "
                f"{'synchronous' if event['synchronous'] else 'asynchronous'}, lineage {event['lineage']}")  # fmt: skip
    if kind == "streaming":
        return f"receive-wal: pg_receivewal streaming (pid {event['pid']})"
    if kind == "segment":
        how = "archived" if event["stored"] else "already archived (identical)"
        return f"receive-wal: {event['name']} {how}"
    if kind == "partial":
        return f"receive-wal: {event['segment']} stored up to byte {event['end']}"
    if kind == "disconnected":
        retry = event.get("retry_in_s")
        return f"receive-wal: disconnected: {event.get('error')}" + (
            f"; retrying in {retry:g} s" if retry else ""
        )
    if kind == "error":
        return f"receive-wal: {event['file']}: {event['error']} (will retry)"
    if kind == "pg_receivewal":
        return f"pg_receivewal: {event['line']}"
    if kind == "stopped":
        return (
            f"receive-wal: stopped ({event['segments']} segments, {event['partials']} partial states stored)"
        )
    return None


@click.command("receive-wal")
@click.option("--synchronous", is_flag=True,
              help="pg_receivewal --synchronous: flush and acknowledge every write (for synchronous_standby_names)")  # fmt: skip
@click.option(
    "--slot", metavar="NAME", help="replication slot and application_name (default: [postgres].receive_slot)"
)
@click.option("--spool", metavar="DIR", type=click.Path(file_okay=False, path_type=Path),
              help="spool directory for pg_receivewal (default: [postgres].receive_dir)")  # fmt: skip
@click.option("--interval", type=FiniteRange(0.0, 60.0), default=0.2, show_default=True,
              help="least seconds between two stores of the partial segment")  # fmt: skip
@click.option("--once", is_flag=True, help="do not reconnect: exit when pg_receivewal ends")
@pass_app
def receive_wal(
    app: AppContext, synchronous: bool, slot: str | None, spool: Path | None, interval: float, once: bool
) -> int:
    """Stream WAL into the archive with pg_receivewal and a replication slot (a service).

    Completed segments are archived like wal-push does; the segment being written is stored
    whenever it grows (at most every --interval seconds) and when the connection ends, so
    `wal-fetch` can serve it.  Reconnects with backoff; SIGTERM/SIGINT stop it cleanly.

    \b
    Exit codes: 0 stopped by SIGTERM/SIGINT (--once: pg_receivewal ended normally), 1 failed,
    2 usage or configuration, 3 a streamed segment conflicts with the archived one."""
    from coldkeep.postgres.receive import ReceiveOptions, Receiver
    from coldkeep.repository.setup import open_repository

    config = app.config()
    if spool is not None and not spool.is_absolute():
        spool = spool.resolve()
    options = ReceiveOptions(synchronous=synchronous, slot=slot or config.postgres.receive_slot, spool=spool,
                             min_interval_s=interval, once=once)  # fmt: skip
    out = app.out

    def emit(event: dict[str, Any]) -> None:
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}
        if out.json:
            sys.stdout.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()
            return
        line = _human(event)
        if line is None or (out.quiet and event["event"] not in ("error", "disconnected")):
            return
        if event["event"] == "partial" and not out.verbose:
            return  # several a second: only with -v
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    with open_repository(config) as repo:
        receiver = Receiver(config, repo, options, emit)

        def on_signal(signum: int, _frame: object) -> None:
            receiver.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return receiver.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
