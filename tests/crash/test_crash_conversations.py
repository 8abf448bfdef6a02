"""``kill -9`` of a real ``coldkeep conversations archive`` (also with ``--purge``), ``compact`` and
``restore`` process, then a rerun: nothing lost, nothing archived twice (invariants 1 and 2).

Every kill point works on its own clone of one template database (~6,000 rows over 12 months in
random id order, batches of 200 rows, so ~25 batch files) with its own archive directory; all
points share one repository.  Points run two at a time.

* Deterministic kills: ``COLDKEEP_CONV_KILL_AT=<stage>:<n>`` makes the process SIGKILL itself the
  n-th time it reaches a stage — after a batch file is written, after its fsync, after its rename
  (before the ledger transaction), inside the transaction before COMMIT, after COMMIT, before and
  after storing a file in the repository, inside and after a purge transaction.  The test asserts
  exit -9, so every kill provably landed there.
* Random kills: SIGKILL after a seeded random delay within the run's normal duration (24 of
  them, half with ``--purge``; at least 20 must land before the run ends — a point whose run
  finished first is checked anyway and retried with half the delay).

After every kill: ``verify`` passes on what the killed run left (the ledger and the table never
disagree), a rerun exits 0, and :meth:`ConvSite.check` proves every eligible row is in exactly one
batch file with its original data, the table and the ledger agree, and (with ``--purge``) every
purged row is in a batch stored in the repository.
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.convsite import ConvSite

from coldkeep.postgres.cluster import TempCluster

pytestmark = [pytest.mark.slow, pytest.mark.pg]

ROWS = 6000
BATCH_ROWS = 200
WORKERS = 2
MIN_KILLS = 20

#: (stage, n, --purge)
STAGES: list[tuple[str, int, bool]] = [
    ("file_written", 1, False),
    ("file_synced", 3, False),
    ("renamed", 1, False),
    ("renamed", 6, False),
    ("before_commit", 2, False),
    ("before_commit", 9, False),
    ("committed", 1, False),
    ("committed", 12, False),
    ("before_store", 1, False),
    ("stored", 1, False),
    ("stored", 7, False),
    ("store_recorded", 4, False),
    ("renamed", 4, True),
    ("committed", 5, True),
    ("stored", 3, True),
    ("purge_deleted", 1, True),
    ("purge_deleted", 5, True),
    ("purged", 3, True),
    ("purged", 11, True),
]
RANDOM_KILLS = 24  # half of them with --purge; at least MIN_KILLS of them must land before the run ends


@dataclass
class Point:
    label: str
    purge: bool
    stage: str | None = None
    delay: float | None = None


@dataclass
class Outcome:
    label: str
    killed: bool
    error: str = ""


@pytest.fixture
def template(pg_cluster: TempCluster, tmp_path: Path) -> tuple[ConvSite, dict[int, tuple[Any, ...]]]:
    site = ConvSite(pg_cluster, tmp_path / "template", dbname="tmpl", batch_rows=BATCH_ROWS).create()
    site.load(ROWS, seed=2024)
    site.sql("CHECKPOINT")
    return site, site.rows()


def clone(template: ConvSite, root: Path, name: str) -> ConvSite:
    site = ConvSite(
        template.cluster, root / name, dbname=name, batch_rows=BATCH_ROWS, repo_url=template.repo_url
    )
    return site.create(template=template.dbname, repo=False)


def kill_and_rerun(site: ConvSite, point: Point, args: list[str], check: Callable[[], object]) -> Outcome:
    if point.stage is not None:
        proc = site.run(*args, env={"COLDKEEP_CONV_KILL_AT": point.stage})
        assert proc.returncode == -signal.SIGKILL, (
            f"{point.label}: expected SIGKILL, got exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
        killed = True
    else:
        assert point.delay is not None
        child = site.popen(*args)
        time.sleep(point.delay)
        child.send_signal(signal.SIGKILL)
        child.communicate()
        killed = child.returncode == -signal.SIGKILL
    # what the killed run left is consistent: the ledger and the table agree, files match the ledger
    after_kill = site.ok("conversations", "verify")
    assert after_kill["ok"], (point.label, after_kill["problems"])
    site.ok(*args)  # the rerun completes it
    check()
    assert site.ok("conversations", "verify", "--repo")["ok"]
    return Outcome(point.label, killed)


def run_points(points: list[Point], work: Callable[[int, Point], Outcome]) -> list[Outcome]:
    def guarded(i: int, p: Point) -> Outcome:
        try:
            return work(i, p)
        except BaseException as exc:  # report every failing point, not only the first
            return Outcome(p.label, False, f"{exc}\n{traceback.format_exc()[-3000:]}")

    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(guarded, range(len(points)), points))
    failures = [f"--- {o.label}\n{o.error}" for o in outcomes if o.error]
    assert not failures, "\n".join(failures)
    return outcomes


def test_kill_archive_at_every_stage_and_at_random(
    template: tuple[ConvSite, dict[int, tuple[Any, ...]]], tmp_path: Path
) -> None:
    tmpl, original = template
    # how long an undisturbed run takes (without and with --purge), for the random delays
    seconds: dict[bool, float] = {}
    for purge in (False, True):
        probe = clone(tmpl, tmp_path, f"probe{int(purge)}")
        started = time.monotonic()
        out = probe.ok("conversations", "archive", *(["--purge"] if purge else []))
        seconds[purge] = time.monotonic() - started
        probe.check(original, purged=purge)
        assert out["files"] >= 20, f"only {out['files']} batch files; make the test data bigger"

    points = [Point(f"{s}:{n}{' --purge' if p else ''}", p, stage=f"{s}:{n}") for s, n, p in STAGES]
    rng = random.Random(20261126)
    for i in range(RANDOM_KILLS):
        purge = bool(i % 2)
        delay = round(rng.uniform(0.15, 0.85) * seconds[purge], 3)
        points.append(Point(f"random-{i}:{delay}s{' --purge' if purge else ''}", purge, delay=delay))

    def work(i: int, point: Point) -> Outcome:
        args = ["conversations", "archive", *(["--purge"] if point.purge else [])]
        # a random delay can outlast a run that went faster than the probe (the machine is shared):
        # then that run is checked like any other and the point retried with half the delay
        for attempt in range(4):
            site = clone(tmpl, tmp_path, f"p{i:02d}{'abcd'[attempt]}")
            outcome = kill_and_rerun(site, point, args, partial(site.check, original, purged=point.purge))
            if outcome.killed or point.delay is None:
                return outcome
            point = replace(point, delay=round(point.delay / 2, 3))
        return outcome

    outcomes = run_points(points, work)
    assert all(o.killed for o in outcomes if not o.label.startswith("random"))
    random_kills = [o for o in outcomes if o.label.startswith("random")]
    assert sum(o.killed for o in random_kills) >= MIN_KILLS, [o.label for o in random_kills if not o.killed]


def test_kill_compact_and_restore(
    template: tuple[ConvSite, dict[int, tuple[Any, ...]]], tmp_path: Path
) -> None:
    tmpl, original = template
    base = clone(tmpl, tmp_path, "base")
    base.ok("conversations", "archive", "--purge")
    months = sorted({b["month"] for b in base.ledger() if b["month"] < "2025-09"})
    month = max(months, key=lambda m: sum(1 for b in base.ledger() if b["month"] == m))
    base.sql("CHECKPOINT")
    points = [
        Point(f"compact {s}", True, stage=s)
        for s in ("compact_written:1", "compact_before_commit:1", "compact_committed:1", "stored:1")
    ] + [Point(f"restore {s}", True, stage=s) for s in ("restore_before_commit:1", "restore_before_commit:2")]

    def work(i: int, point: Point) -> Outcome:
        # clone the archived database and its archive directory
        site = ConvSite(tmpl.cluster, tmp_path / f"c{i}", dbname=f"c{i}", batch_rows=BATCH_ROWS,
                        repo_url=tmpl.repo_url)  # fmt: skip
        site.cluster.sql(f'CREATE DATABASE "c{i}" TEMPLATE "{base.dbname}"')
        import shutil

        shutil.copytree(base.archive_dir, site.archive_dir)
        marker = site.archive_dir / ".coldkeep-archive.json"
        marker.write_text(marker.read_text().replace(f'"{base.dbname}"', f'"c{i}"'))
        site.write_config()
        if point.label.startswith("compact"):
            args = ["conversations", "compact", "--month", month]

            def check() -> None:
                site.check(original, purged=True)
                assert [b["kind"] for b in site.ledger() if b["month"] == month] == ["compacted"]
        else:
            args = ["conversations", "restore", "--month", month]

            def check() -> None:
                site.check(original, purged=None)
                rows = site.rows()
                ids = [i for b in site.ledger() if b["month"] == month for i in b["ids"]]
                assert ids and all(rows[i] == original[i] for i in ids)

        return kill_and_rerun(site, point, args, check)

    outcomes = run_points(points, work)
    assert all(o.killed for o in outcomes)
