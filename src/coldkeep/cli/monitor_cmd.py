"""``coldkeep metrics | exporter | alerts rules`` — monitoring (:mod:`coldkeep.ops.metrics`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.params import FiniteRange
from coldkeep.cli.repo_support import open_repo


@click.command()
@click.option("--textfile", "textfile_dir", default=None, metavar="DIR",
              help="write DIR/coldkeep.prom (default: print the metrics)")  # fmt: skip
@click.option("--push", is_flag=True, help="also push to [metrics] pushgateway_url (add semantics)")
@pass_app
def metrics(app: AppContext, textfile_dir: str | None, push: bool) -> None:
    """Compute the metrics now from the run records and the repository; print them in the
    Prometheus text format, or write the node_exporter textfile."""
    from coldkeep.errors import UsageError
    from coldkeep.ops import metrics as m

    cfg = app.config()
    with open_repo(app) as repo:
        families = m.families(m.read_inputs(cfg, repo))
    done: dict[str, str] = {}
    if textfile_dir:
        done["textfile"] = str(m.write_textfile(textfile_dir, families))
    if push:
        if not cfg.metrics.pushgateway_url:
            raise UsageError("no Pushgateway configured", hint="set [metrics] pushgateway_url")
        m.push(cfg.metrics.pushgateway_url, cfg.metrics.job, families)
        done["pushgateway"] = cfg.metrics.pushgateway_url
    if done:
        app.out.emit(done, lambda c: c.print(", ".join(f"{k}: {v}" for k, v in done.items())))
    else:
        sys.stdout.write(m.exposition(families).decode())


@click.command()
@click.option(
    "--listen", default=None, metavar="HOST:PORT", help="default: [metrics] listen (127.0.0.1:9788)"
)
@click.option("--refresh", "refresh_s", type=FiniteRange(min=0.1), default=60.0, show_default=True,
              metavar="SECONDS", help="recompute the metrics this often (a scrape is served from memory)")  # fmt: skip
@pass_app
def exporter(app: AppContext, listen: str | None, refresh_s: float) -> None:
    """Serve the metrics for Prometheus to scrape (GET /metrics) and the HTML report (GET /, as
    `coldkeep report` writes it), both from memory, until stopped (SIGTERM, ^C)."""
    from coldkeep.ops.exporter import Exporter, MetricsSource

    cfg = app.config()
    source = MetricsSource(cfg)
    server = Exporter(source.render_all, listen or cfg.metrics.listen, refresh_s)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    sys.stderr.write(f"coldkeep exporter: serving http://{server.address}/metrics\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        source.close()


@click.group()
def alerts() -> None:
    """Prometheus alert rules for coldkeep's metrics."""


@alerts.command("rules")
@click.option(
    "--out", "out", default=None, metavar="FILE", help="write the rules here (default: standard output)"
)
@pass_app
def rules(app: AppContext, out: str | None) -> None:
    """Write the alert rules for this configuration (check them with `promtool check rules`)."""
    from coldkeep.durable import write_atomic
    from coldkeep.ops.alerts import rules_yaml

    text = rules_yaml(app.config())
    if out is None:
        sys.stdout.write(text)
        return
    write_atomic(Path(out), text.encode(), mode=0o644)
    app.out.emit({"rules": out}, lambda c: c.print(f"rules written to {out}"))
