"""Prometheus metrics, computed from the run records and the repository.

:func:`read_inputs` and :func:`families` turn the run records (:mod:`coldkeep.ops.runs`), the
repository's figures, ``pg_stat_archiver`` and the newest WAL segment in the repository (when
``[postgres]`` is in use), the checkpoints by type and place (``[checkpoints]``), the conversation
rows the last archive counted and the storage allocations (:mod:`coldkeep.ops.storage`) into
metric families; three outputs show the same families:

* the node_exporter textfile (``[metrics] textfile_dir``/``coldkeep.prom``), written atomically
  after every recorded job;
* the Pushgateway (``[metrics] pushgateway_url``), pushed after every recorded job with add
  semantics (POST: this group's other metrics stay);
* ``coldkeep exporter`` (:mod:`coldkeep.ops.exporter`), which serves them from memory.

The spec's four metrics keep the spec's names (``backup_last_success_timestamp``,
``backup_size_bytes``, ``backup_duration_seconds``, ``backup_failures_total``), labelled by
``type`` (the job: ``pg_backup``, ``backup``, ``conversations_archive``, ``repo_copy_offsite``,
…) for the jobs that back something up; every job also gets the ``coldkeep_job_*`` metrics.  The
label is ``type``, never ``job`` (Prometheus's own target label).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from coldkeep import clock
from coldkeep.config import Config
from coldkeep.durable import write_atomic
from coldkeep.errors import ColdkeepError
from coldkeep.ops.runs import RunRecord, list_records, pending_records
from coldkeep.ops.storage import Usage, repository_figures
from coldkeep.ops.storage import usage as storage_usage

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

log = logging.getLogger(__name__)

#: the file written in ``[metrics] textfile_dir``
TEXTFILE_NAME = "coldkeep.prom"
#: the jobs that back something up: they feed the spec's ``backup_*`` metrics
BACKUP_JOBS = frozenset(
    {
        "backup",
        "pg backup",
        "conversations archive",
        "checkpoints backup",
        "checkpoints archive",
        "datasets snapshot",
        "tiers backup",
        "repo copy",
    }
)


@dataclass
class Inputs:
    """What the metrics are computed from (gathered by :func:`read_inputs`)."""

    records: list[RunRecord] = field(default_factory=list)
    repository_up: bool = False
    repository: dict[str, float] = field(default_factory=dict)
    archiver: dict[str, float] | None = None
    archive_timeout_s: float = 0.0
    storage: list[Usage] = field(default_factory=list)
    #: when the newest WAL segment in the repository was stored (``None``: none, or not read)
    wal_repository_last: float | None = None
    #: checkpoints by (type, place): hot / repository / both (``[checkpoints]`` in use)
    checkpoints: dict[tuple[str, str], int] = field(default_factory=dict)


def read_inputs(config: Config, repo: Repository | None) -> Inputs:
    """Everything :func:`families` needs: the records (the repository's, or only the pending ones
    when ``repo`` is ``None``), the repository's size, the WAL archiver's statistics, the storage
    allocations.  Slow parts (listing, PostgreSQL) happen here, never in a scrape."""
    inputs = Inputs()
    url = config.repository.url
    if repo is not None:
        try:
            inputs.records = list_records(repo, pending_url=url)
            inputs.repository = repository_figures(repo)
            inputs.repository_up = True
        except ColdkeepError as exc:
            log.warning("metrics: repository not read: %s", exc.message)
    if not inputs.repository_up:
        inputs.records = pending_records(url)
    if config.postgres.in_use:
        inputs.archive_timeout_s = float(config.postgres.archive_timeout)
        inputs.archiver = _archiver(config)
        if repo is not None and inputs.repository_up:
            inputs.wal_repository_last = _wal_in_repository(repo)
    if config.checkpoints.in_use and repo is not None and inputs.repository_up:
        inputs.checkpoints = _checkpoints(config, repo)
    # the cached scan, never a walk: a metrics refresh stays cheap
    inputs.storage = storage_usage(config, inputs.records, repo_stored=inputs.repository.get("stored_bytes"))
    return inputs


def _wal_in_repository(repo: Repository) -> float | None:
    """When the newest segment of the current WAL lineage was stored in the repository (one
    listing of the lineage and one ``stat``)."""
    from coldkeep.postgres import walchain

    try:
        lineage = walchain.current_lineage(repo)
        if lineage is None:
            return None
        newest = walchain.newest_segment_time(repo, str(lineage["prefix"]))
    except ColdkeepError as exc:
        log.info("metrics: archived WAL not read: %s", exc.message)
        return None
    return None if newest is None else newest.timestamp()


def _checkpoints(config: Config, repo: Repository) -> dict[tuple[str, str], int]:
    """Checkpoints by type and place: the hot disk's names (directory listings, no completeness
    walk) against the stored ones (the snapshot catalog)."""
    from coldkeep.checkpoints import inventory

    cfg = config.checkpoints
    try:
        stored = inventory.stored_checkpoints(repo)
    except ColdkeepError as exc:
        log.info("metrics: stored checkpoints not read: %s", exc.message)
        return {}
    return inventory.counts_by_place(inventory.hot_names(cfg.root, cfg.phase_glob), stored)


def _archiver(config: Config) -> dict[str, float] | None:
    """``pg_stat_archiver`` of the configured server (``None``: unreachable)."""
    from coldkeep.postgres.pgconn import connect

    try:
        with connect(config.postgres, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT archived_count, failed_count, extract(epoch FROM last_archived_time),"
                " extract(epoch FROM last_failed_time), extract(epoch FROM stats_reset)"
                " FROM pg_stat_archiver"
            ).fetchone()
            slot = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                (config.postgres.receive_slot,),
            ).fetchone()
    except (ColdkeepError, OSError) as exc:
        log.info("metrics: pg_stat_archiver not read: %s", exc)
        return None
    except Exception as exc:  # psycopg errors: the server answered badly
        log.info("metrics: pg_stat_archiver not read: %s", exc)
        return None
    assert row is not None
    keys = ("archived", "failed", "last_archived", "last_failed", "stats_reset")
    figures = {k: float(v) for k, v in zip(keys, row, strict=True) if v is not None}
    if slot is not None:  # the receiver's slot exists: is it streaming?
        figures["receiver_up"] = 1.0 if slot[0] else 0.0
    return figures


# ------------------------------------------------------------------------------------------------
# families


def _last(records: Sequence[RunRecord], *, success: bool) -> RunRecord | None:
    for record in reversed(records):
        if not success or record.succeeded:
            return record
    return None


def families(inputs: Inputs, *, now: float | None = None) -> list[Metric]:
    """The metric families of ``inputs`` (pure: same inputs, same families)."""
    by_type: dict[str, list[RunRecord]] = {}
    for record in sorted(inputs.records, key=lambda r: (r.end, r.name)):
        by_type.setdefault(record.type, []).append(record)

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=list(labels))

    spec_last = gauge("backup_last_success_timestamp", "Last successful backup (Unix time)", ["type"])
    spec_size = gauge(
        "backup_size_bytes", "Backup size: logical bytes of the last successful backup", ["type"]
    )
    spec_dur = gauge("backup_duration_seconds", "Backup duration of the last successful backup", ["type"])
    spec_fail = CounterMetricFamily("backup_failures_total", "Total backup failures", labels=["type"])
    last_ok = gauge(
        "coldkeep_job_last_success_timestamp_seconds", "End of the job's last successful run", ["type"]
    )
    last_run = gauge("coldkeep_job_last_run_timestamp_seconds", "End of the job's last run", ["type"])
    last_res = gauge(
        "coldkeep_job_last_run_success", "1 if the job's last run succeeded (ok or partial), else 0", ["type"]
    )
    partial = gauge("coldkeep_job_last_run_partial", "1 if the job's last run was partial", ["type"])
    duration = gauge("coldkeep_job_duration_seconds", "Duration of the job's last run", ["type"])
    logical = gauge("coldkeep_job_logical_bytes", "Logical bytes of the job's last successful run", ["type"])
    new = gauge(
        "coldkeep_job_new_stored_bytes", "Bytes newly stored by the job's last successful run", ["type"]
    )
    runs = CounterMetricFamily("coldkeep_job_runs", "Recorded runs of the job", labels=["type", "result"])
    fails = CounterMetricFamily("coldkeep_job_failures", "Failed runs of the job", labels=["type"])
    for kind, recs in sorted(by_type.items()):
        last = recs[-1]
        good = _last(recs, success=True)
        failures = sum(1 for r in recs if not r.succeeded)
        last_run.add_metric([kind], last.end.timestamp())
        last_res.add_metric([kind], 1.0 if last.succeeded else 0.0)
        partial.add_metric([kind], 1.0 if last.result == "partial" else 0.0)
        duration.add_metric([kind], last.duration_s)
        fails.add_metric([kind], float(failures))
        for result in ("ok", "partial", "failed"):
            runs.add_metric([kind, result], float(sum(1 for r in recs if r.result == result)))
        if good is not None:
            last_ok.add_metric([kind], good.end.timestamp())
            if good.logical_bytes is not None:
                logical.add_metric([kind], float(good.logical_bytes))
            if good.new_bytes is not None:
                new.add_metric([kind], float(good.new_bytes))
        if last.job in BACKUP_JOBS:
            spec_fail.add_metric([kind], float(failures))
            if good is not None:
                spec_last.add_metric([kind], good.end.timestamp())
                spec_dur.add_metric([kind], good.duration_s)
                if good.logical_bytes is not None:
                    spec_size.add_metric([kind], float(good.logical_bytes))
    out: list[Metric] = [spec_last, spec_size, spec_dur, spec_fail, last_ok, last_run, last_res, partial,
                         duration, logical, new, runs, fails]  # fmt: skip
    drills = [r for recs in by_type.values() for r in recs if r.job == "drill"]  # every scenario
    out += _restore_test(by_type.get("pg_restore_test", []), sorted(drills, key=lambda r: (r.end, r.name)))
    out += _repository(inputs)
    out += _wal(inputs)
    out += _storage_families(inputs)
    out += _services(inputs, by_type.get("conversations_archive", []))
    generated = gauge("coldkeep_metrics_generated_timestamp_seconds", "When these figures were computed")
    generated.add_metric([], clock.now().timestamp() if now is None else now)
    out.append(generated)
    return out


def _restore_test(tests: Sequence[RunRecord], drills: Sequence[RunRecord]) -> list[Metric]:
    out: list[Metric] = []
    for what, recs, doc in (("restore_test", tests, "restore test"), ("drill", drills, "recovery drill")):
        passed = GaugeMetricFamily(f"coldkeep_{what}_passed", f"1 if the last {doc} passed, else 0")
        rto = GaugeMetricFamily(
            f"coldkeep_{what}_rto_seconds", f"Measured recovery time of the last passed {doc}"
        )
        rpo = GaugeMetricFamily(
            f"coldkeep_{what}_rpo_seconds", f"Measured recovery point (data lost) of the last passed {doc}"
        )
        if recs:
            passed.add_metric([], 1.0 if recs[-1].result == "ok" else 0.0)
            good = _last([r for r in recs if r.result == "ok"], success=True)
            if good is not None:
                rto.add_metric([], float(good.figures.get("rto_s", good.duration_s)))
                if isinstance(good.figures.get("rpo_s"), int | float):
                    rpo.add_metric([], float(good.figures["rpo_s"]))
        out += [passed, rto, rpo]
    return out


def _repository(inputs: Inputs) -> list[Metric]:
    up = GaugeMetricFamily("coldkeep_repository_up", "1 if the repository could be read for these figures")
    up.add_metric([], 1.0 if inputs.repository_up else 0.0)
    pending = GaugeMetricFamily(
        "coldkeep_run_records_pending", "Run records kept locally, not yet in the repository"
    )
    pending.add_metric([], float(sum(1 for r in inputs.records if r.pending)))
    out: list[Metric] = [up, pending]
    for key, doc in (("logical_bytes", "Logical bytes of every snapshot"),
                     ("stored_bytes", "Bytes the repository stores (packs and named objects)"),
                     ("snapshots", "Snapshots in the repository")):  # fmt: skip
        family = GaugeMetricFamily(f"coldkeep_repository_{key}", doc)
        if key in inputs.repository:
            family.add_metric([], inputs.repository[key])
        out.append(family)
    return out


def _wal(inputs: Inputs) -> list[Metric]:
    if inputs.archive_timeout_s <= 0 and inputs.archiver is None:
        return []
    a = inputs.archiver or {}
    up = GaugeMetricFamily("coldkeep_postgres_up", "1 if PostgreSQL answered for these figures")
    up.add_metric([], 0.0 if inputs.archiver is None else 1.0)
    timeout = GaugeMetricFamily("coldkeep_wal_archive_timeout_seconds", "[postgres] archive_timeout")
    timeout.add_metric([], inputs.archive_timeout_s)
    archived = CounterMetricFamily(
        "coldkeep_wal_archived_segments", "WAL segments archived (pg_stat_archiver)"
    )
    failed = CounterMetricFamily(
        "coldkeep_wal_archive_failures", "Failed WAL archive attempts (pg_stat_archiver)"
    )
    last_ok = GaugeMetricFamily(
        "coldkeep_wal_last_archived_timestamp_seconds", "When the last WAL segment was archived"
    )
    last_bad = GaugeMetricFamily(
        "coldkeep_wal_last_failed_timestamp_seconds", "When WAL archiving last failed"
    )
    if inputs.archiver is not None:
        archived.add_metric([], a.get("archived", 0.0))
        failed.add_metric([], a.get("failed", 0.0))
        # never archived since the statistics were reset: the reset is the age's origin
        last_ok.add_metric([], a.get("last_archived", a.get("stats_reset", 0.0)))
        last_bad.add_metric([], a.get("last_failed", 0.0))
    in_repo = GaugeMetricFamily(
        "coldkeep_wal_repository_last_segment_timestamp_seconds",
        "When the newest WAL segment in the repository was stored (the repository's own figure)",
    )
    if inputs.wal_repository_last is not None:
        in_repo.add_metric([], inputs.wal_repository_last)
    receiver = GaugeMetricFamily(
        "coldkeep_wal_receiver_up", "1 if the WAL receiver's replication slot is active"
    )
    if "receiver_up" in a:
        receiver.add_metric([], a["receiver_up"])
    return [up, timeout, archived, failed, last_ok, last_bad, in_repo, receiver]


def _storage_families(inputs: Inputs) -> list[Metric]:
    labels = ["location", "allocation", "path"]
    allocated = GaugeMetricFamily(
        "coldkeep_storage_allocated_bytes", "Bytes allocated ([storage])", labels=labels
    )
    used = GaugeMetricFamily("coldkeep_storage_used_bytes", "Bytes used in the allocation", labels=labels)
    growth = GaugeMetricFamily(
        "coldkeep_storage_growth_bytes_per_day",
        "Growth of the allocation's used bytes per day (from the run records)",
        labels=labels,
    )
    full = GaugeMetricFamily(
        "coldkeep_storage_days_until_full",
        "Days until the allocation is full at its growth (absent when it does not grow)",
        labels=labels,
    )
    for row in inputs.storage:
        key = [row.location, row.name, row.path]
        allocated.add_metric(key, row.allocated)
        if row.used is not None:
            used.add_metric(key, row.used)
        if row.growth_per_day is not None:
            growth.add_metric(key, row.growth_per_day)
        days = row.days_until_full
        if days is not None:
            full.add_metric(key, days)
    return [allocated, used, growth, full]


def _services(inputs: Inputs, archives: Sequence[RunRecord]) -> list[Metric]:
    """Checkpoints by type and place; conversation rows by state, as the last conversation
    archive counted them (its record's ``conversation_rows``)."""
    checkpoints = GaugeMetricFamily(
        "coldkeep_checkpoints",
        "Checkpoints by type and place (hot / repository / both)",
        labels=["type", "place"],
    )
    for (type_, place), count in sorted(inputs.checkpoints.items()):
        checkpoints.add_metric([type_, place], float(count))
    rows = GaugeMetricFamily(
        "coldkeep_conversation_rows",
        "Conversation rows by state (live / archived: still in the table / purged: in the archive only),"
        " counted by the last conversation archive",
        labels=["state"],
    )
    good = _last(archives, success=True)
    counted = good.figures.get("conversation_rows") if good is not None else None
    if isinstance(counted, dict):
        for state in ("live", "archived", "purged"):
            value = counted.get(state)
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.add_metric([state], float(value))
    return [checkpoints, rows]


# ------------------------------------------------------------------------------------------------
# outputs


class _Fixed(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def registry(metrics: Iterable[Metric]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(metrics))
    return reg


def exposition(metrics: Iterable[Metric]) -> bytes:
    """The text exposition format of ``metrics``."""
    from prometheus_client import generate_latest

    return generate_latest(registry(metrics))


def write_textfile(directory: str | os.PathLike[str], metrics: Iterable[Metric]) -> Path:
    """Replace ``<directory>/coldkeep.prom`` atomically (node_exporter never reads a part)."""
    path = Path(directory) / TEXTFILE_NAME
    write_atomic(path, exposition(metrics), mode=0o644)
    return path


def push(url: str, job: str, metrics: Iterable[Metric], *, timeout: float = 10.0) -> None:
    """Push to the Pushgateway with add semantics (POST), grouped by job and instance."""
    from prometheus_client import pushadd_to_gateway

    try:
        pushadd_to_gateway(url, job=job, registry=registry(metrics), timeout=timeout,
                           grouping_key={"instance": socket.gethostname()})  # fmt: skip
    except OSError as exc:
        raise ColdkeepError(f"Pushgateway {url}: {exc}", hint="check [metrics] pushgateway_url") from None


def after_job(config: Config, repo: Repository | None) -> dict[str, Any]:
    """After a recorded job: write the textfile (when its directory exists) and push (when a
    Pushgateway is configured).  Returns what was done."""
    m = config.metrics
    if not (m.textfile_dir and os.path.isdir(m.textfile_dir)) and not m.pushgateway_url:
        return {}
    metrics = families(read_inputs(config, repo))
    done: dict[str, Any] = {}
    if m.textfile_dir and os.path.isdir(m.textfile_dir):
        done["textfile"] = str(write_textfile(m.textfile_dir, metrics))
    if m.pushgateway_url:
        push(m.pushgateway_url, m.job, metrics)
        done["pushgateway"] = m.pushgateway_url
    return done
