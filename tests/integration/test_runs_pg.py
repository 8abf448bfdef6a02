"""Run records and metrics of the PostgreSQL and conversation jobs, on a real throwaway cluster:
`pg backup`, `pg restore-test` (passed and failed), `pg expire` (a dry run is not a run) and
`conversations archive` record their runs; `coldkeep metrics` reads pg_stat_archiver."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.convsite import ConvSite
from tests.pgsite import Env, archiving_env

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def _metrics(env: Env) -> dict[str, float]:
    text = env.ck("metrics").stdout
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_pg_jobs_record_their_runs_and_metrics_read_the_archiver(pgenv: Env) -> None:
    env, c = pgenv, pgenv.cluster
    c.sql("INSERT INTO marks (label) VALUES ('a')")
    backup = env.ckj("pg", "backup")
    env.switch_and_wait()
    env.ck("pg", "restore-test")
    env.ckj("pg", "expire", "--dry-run")  # not a run
    env.ckj("pg", "expire", "--no-prune")
    # a damaged pack: the restore test fails (exit 3) and says so in its record
    pack = max(
        (p for p in (env.base / "repo" / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    env.ck("pg", "restore-test", expect=3)

    runs = env.ckj("runs")
    assert [(r["job"], r["result"]) for r in runs] == [
        ("pg backup", "ok"),
        ("pg restore-test", "ok"),
        ("pg expire", "ok"),
        ("pg restore-test", "failed"),
    ]
    assert runs[0]["logical_bytes"] == backup["logical_bytes"] > 0
    assert runs[0]["new_bytes"] == backup["new_stored_bytes"]
    assert runs[0]["figures"]["start_wal"] == backup["start_wal"]
    assert runs[3]["error_class"] == "IntegrityError" and runs[3]["exit_code"] == 3

    m = _metrics(env)
    assert m["coldkeep_postgres_up"] == 1
    assert m["coldkeep_wal_archived_segments_total"] >= 2  # the backup's and the switch's
    assert m["coldkeep_wal_last_archived_timestamp_seconds"] > 0
    # the repository's own figure: when its newest segment was stored (the object's time)
    segments = [p for p in (env.base / "repo" / "named").rglob("*") if re.fullmatch("[0-9A-F]{24}", p.name)]
    assert segments
    stored_at = m["coldkeep_wal_repository_last_segment_timestamp_seconds"]
    assert stored_at == pytest.approx(max(p.stat().st_mtime for p in segments), abs=2)
    assert m["coldkeep_wal_archive_timeout_seconds"] == 60
    assert m["coldkeep_restore_test_passed"] == 0  # the last one failed
    assert m["coldkeep_restore_test_rto_seconds"] == pytest.approx(runs[1]["duration_s"], abs=0.002)
    assert m["backup_size_bytes{type=pg_backup}"] == backup["logical_bytes"]
    assert m["coldkeep_job_failures_total{type=pg_restore_test}"] == 1
    assert "backup_last_success_timestamp{type=pg_restore_test}" not in m  # not a backup

    c.stop()
    down = _metrics(env)
    assert down["coldkeep_postgres_up"] == 0  # an alert, not a missing series
    # pg_stat_archiver is gone with the server; the repository still says how old the WAL is
    assert down["coldkeep_wal_repository_last_segment_timestamp_seconds"] == stored_at


def test_conversations_archive_records_its_run(pg_cluster: TempCluster, tmp_path: Path) -> None:
    site = ConvSite(pg_cluster, tmp_path / "site", batch_rows=300).create()
    site.load(400, seed=4)
    site.ok("conversations", "archive", "--dry-run")  # not a run
    out = site.ok("conversations", "archive")
    runs = site.ok("runs")
    assert [(r["job"], r["result"]) for r in runs] == [("conversations archive", "ok")]
    assert (
        runs[0]["new_bytes"] == out["bytes_written"]
        and runs[0]["figures"]["rows_archived"] == out["rows_archived"]
    )
    # the rows by state, counted once after the archive, are what the metrics show
    totals = site.ok("conversations", "stats")["totals"]
    assert runs[0]["figures"]["conversation_rows"] == {
        "live": totals["hot"],
        "archived": totals["archived"],
        "purged": totals["purged"],
    }
    assert totals["hot"] > 0 and totals["archived"] == out["rows_archived"] > 0
    text = site.run("metrics").stdout
    got = {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "coldkeep_conversation_rows"
    }
    assert got == {"live": totals["hot"], "archived": totals["archived"], "purged": totals["purged"]}
