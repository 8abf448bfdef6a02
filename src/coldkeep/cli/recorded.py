"""``@recorded("job")``: a command whose every run is recorded (:mod:`coldkeep.ops.runs`).

Put it between the click decorators and the function::

    @pg.command("backup")
    @pass_app
    @recorded("pg backup")
    def backup(app, ...): ...

The run record takes its result from the command's outcome (an exception: ``failed`` with its
class; exit 6: ``partial``; another non-zero exit: ``failed``), its figures from what the command
emitted (``app.out.emit``: the ``--json`` result) and is written with the keys of the repository
the command opened (``open_repo``).  Then the metrics are refreshed (``[metrics]``: textfile,
Pushgateway).  A dry run (``dry_run=True``) is not recorded.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from coldkeep.cli.context import AppContext
from coldkeep.errors import ColdkeepError

if TYPE_CHECKING:
    from coldkeep.ops.runs import RunRecord
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.base import Backend

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def recorded(
    job: str,
    *,
    target: Callable[[dict[str, Any]], str] | None = None,
    mirror: Callable[[AppContext, dict[str, Any]], Backend] | None = None,
) -> Callable[[F], F]:
    """Record every run of the decorated command as ``job`` (``target(kwargs)``: e.g. the copy's
    name; ``mirror(app, kwargs)``: a backend that gets the record of a successful run too — the
    copy ``repo copy`` wrote).  The command's first argument is the :class:`AppContext`
    (``@pass_app``)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(app: AppContext, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dry_run"):
                return fn(app, *args, **kwargs)
            from coldkeep.ops.runs import recording

            name = target(kwargs) if target is not None else ""
            after = _after(app, kwargs, mirror)
            with recording(job, app.repository_section, target=name, after=after) as run:
                app.run, app.out.last_data = run, None
                try:
                    code = fn(app, *args, **kwargs)
                finally:
                    app.run = None
                    run.set_from_result(app.out.last_data)
                run.exit_code = code if isinstance(code, int) else 0
            return code

        return wrapper  # type: ignore[return-value]

    return decorate


#: ``[metrics] textfile_dir``'s default (coldkeep.config.MetricsConfig; a test keeps them equal)
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def metrics_wanted(config_path: str | None) -> bool:
    """Whether ``[metrics]`` asks for an output after a job: a Pushgateway, or a textfile directory
    that exists.  Reads the TOML alone: a job whose config text was validated before does not
    import the configuration models (cli/validated.py) unless it writes metrics."""
    import tomllib

    from coldkeep.lean.config import find_config_path

    try:
        with open(find_config_path(config_path), "rb") as f:
            section = tomllib.load(f).get("metrics", {})
    except (OSError, ValueError, ColdkeepError):
        return False
    if not isinstance(section, dict):
        return False
    textfile = section.get("textfile_dir", DEFAULT_TEXTFILE_DIR)
    return bool(section.get("pushgateway_url")) or (isinstance(textfile, str) and os.path.isdir(textfile))


def _after(
    app: AppContext,
    kwargs: dict[str, Any],
    mirror: Callable[[AppContext, dict[str, Any]], Backend] | None,
) -> Callable[[RunRecord, Repository | None], None]:
    def after(record: RunRecord, repo: Repository | None) -> None:
        if mirror is not None and repo is not None and record.succeeded:
            from coldkeep.ops.runs import mirror_record

            try:
                dst = mirror(app, kwargs)
                try:
                    mirror_record(repo, record, dst)
                finally:
                    dst.close()
            except Exception as exc:  # the next copy carries it
                log.warning("run record of %s not put into the copy: %s", record.job, exc)
        if not metrics_wanted(app.config_path):
            return
        from coldkeep.ops import metrics

        try:
            metrics.after_job(app.config(), repo)
        except Exception as exc:  # metrics never change a job's outcome
            log.warning("metrics not updated after %s: %s", record.job, exc)

    return after
