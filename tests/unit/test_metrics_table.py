"""The README's metrics table lists exactly the metrics coldkeep emits (coldkeep.ops.metrics.families
with every input present), each under its exposition name (a counter with ``_total``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from coldkeep.ops.metrics import Inputs, families
from coldkeep.ops.runs import RunRecord
from coldkeep.ops.storage import Usage

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_names() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z_]+)`", first_cell))
    return names


def _everything() -> Inputs:
    t = datetime(2026, 12, 1, tzinfo=UTC)

    def run(job: str, **figures: object) -> RunRecord:
        return RunRecord(job=job, start=t, end=t + timedelta(minutes=1), result="ok", logical_bytes=10,
                         new_bytes=1, figures=dict(figures))  # fmt: skip

    return Inputs(
        records=[
            run("pg backup"),
            run("pg restore-test", rpo_s=3),
            run("drill", rpo_s=4, rto_s=60),
            run("conversations archive", conversation_rows={"live": 1, "archived": 2, "purged": 3}),
        ],
        repository_up=True,
        repository={"logical_bytes": 1.0, "stored_bytes": 1.0, "snapshots": 1.0},
        archiver={
            "archived": 1,
            "failed": 0,
            "last_archived": 1,
            "last_failed": 1,
            "stats_reset": 0,
            "receiver_up": 1,
        },
        archive_timeout_s=300,
        storage=[Usage("hot", "data", "/data", 100.0, 10.0, "scan", t, 5.0)],
        wal_repository_last=1.0,
        checkpoints={("checkpoint", "hot"): 1},
    )


def test_the_readme_metrics_table_lists_every_metric() -> None:
    emitted = set()
    for family in families(_everything()):
        assert family.samples, f"{family.name} has no sample with every input present"
        emitted.add(family.name + "_total" if isinstance(family, CounterMetricFamily) else family.name)
    table = _table_names()
    assert sorted(emitted - table) == [], "metrics missing from the README table"
    assert sorted(table - emitted) == [], "README table rows no metric has"
