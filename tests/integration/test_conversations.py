"""``coldkeep conversations …`` on a real PostgreSQL 15 cluster, through the real command."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from tests.convsite import CUTOFF, NOW, ConvSite, meta_raw, read_lines
from tests.helpers import one_line_error

from coldkeep import config as config_mod
from coldkeep.conversations import Archiver
from coldkeep.postgres.cluster import TempCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def site(pg_cluster: TempCluster, tmp_path: Path) -> ConvSite:
    return ConvSite(pg_cluster, tmp_path / "site", batch_rows=300).create()


def months_of(site: ConvSite) -> list[str]:
    return sorted({b["month"] for b in site.ledger()})


# ------------------------------------------------------------------------------------------------
# schema


def test_init_schema_creates_the_table_and_is_idempotent(site: ConvSite) -> None:
    cols = site.sql(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'conversations' "
        "ORDER BY ordinal_position"
    )
    assert [c[0] for c in cols] == [
        "id", "session_id", "timestamp", "speaker", "content", "metadata", "archived", "archive_file",
    ]  # fmt: skip
    again = site.ok("conversations", "init-schema")
    assert again["changes"] == []
    indexes = {r[0] for r in site.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'conversations'")}
    assert "conversations_archive_scan" in indexes


def test_init_schema_adds_only_the_missing_archive_columns(pg_cluster: TempCluster, tmp_path: Path) -> None:
    s = ConvSite(pg_cluster, tmp_path / "s")
    s.create(schema=False)
    s.sql(
        'CREATE TABLE conversations (id bigserial PRIMARY KEY, session_id uuid, "timestamp" timestamptz, '
        "speaker text, content text, metadata jsonb, extra int DEFAULT 7)"
    )
    s.sql("INSERT INTO conversations (timestamp, speaker, content) VALUES (now(), 'user', 'kept')")
    proc = s.run("conversations", "archive")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert '"archived"' in line and '"archive_file"' in line
    out = s.ok("conversations", "init-schema")
    assert "added column archived" in out["changes"] and "added column archive_file" in out["changes"]
    assert s.sql("SELECT content, extra, archived FROM conversations") == [("kept", 7, False)]


@pytest.mark.parametrize("missing", ["speaker", "metadata"])
def test_a_missing_column_is_a_one_line_error_naming_it(
    pg_cluster: TempCluster, tmp_path: Path, missing: str
) -> None:
    s = ConvSite(pg_cluster, tmp_path / "s")
    s.create(schema=False)
    cols = {"session_id": "uuid", "timestamp": "timestamptz", "speaker": "text", "content": "text",
            "metadata": "jsonb", "archived": "boolean", "archive_file": "text"}  # fmt: skip
    del cols[missing]
    body = ", ".join(f'"{c}" {t}' for c, t in cols.items())
    s.sql(f"CREATE TABLE conversations (id bigserial PRIMARY KEY, {body})")
    for args in (("conversations", "init-schema"), ("conversations", "archive"), ("conversations", "stats")):
        proc = s.run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f'has no column "{missing}"' in one_line_error(proc)


def test_commands_need_the_conversations_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n')
    from tests.helpers import COLDKEEP

    for args in (["archive"], ["stats"], ["verify"], ["get", "--id", "1"], ["init-schema"]):
        proc = subprocess.run(
            [COLDKEEP, "--config", str(cfg), "conversations", *args], capture_output=True, text=True
        )
        assert proc.returncode == 2, proc.stderr
        assert "the [conversations] section is missing" in one_line_error(proc)


def test_wrong_type_and_missing_table(pg_cluster: TempCluster, tmp_path: Path) -> None:
    s = ConvSite(pg_cluster, tmp_path / "s")
    s.create(schema=False)
    proc = s.run("conversations", "archive")
    assert proc.returncode == 5
    assert "table conversations does not exist" in one_line_error(proc)
    s.sql(
        'CREATE TABLE conversations (id bigserial, session_id uuid, "timestamp" timestamptz, speaker text, '
        "content text, metadata json, archived boolean, archive_file text)"
    )
    proc = s.run("conversations", "init-schema")
    assert proc.returncode == 2
    assert "metadata is json; the archive needs jsonb" in one_line_error(proc)


# ------------------------------------------------------------------------------------------------
# archive, purge, restore


def test_round_trip_archive_purge_restore_is_exact(site: ConvSite) -> None:
    site.load(3000, seed=3)
    original = site.rows()
    out = site.ok("conversations", "archive", "--purge")
    stats = site.check(original, purged=True)
    assert out["rows_archived"] == stats["eligible"] > 1500
    assert out["purge"]["rows_deleted"] == stats["eligible"] and out["purge"]["rows_kept"] == 0
    assert out["repository"]["stored_files"] == out["files"]
    assert site.ok("conversations", "verify")["ok"]
    # every month's files read with the standard tools
    for month in months_of(site):
        for tool in ("zstdcat",):
            shell = f"{tool} {site.archive_dir}/{month}/*.jsonl.zst | jq -c '[.id, .timestamp[0:7]]'"
            got = subprocess.run(
                ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, check=True
            )
            assert {json.loads(x)[1] for x in got.stdout.splitlines()} == {month}
    # restore month by month: the six data columns come back exactly
    for month in months_of(site):
        res = site.ok("conversations", "restore", "--month", month)
        assert res["rows_restored"] == res["rows_in_archive"] > 0
        again = site.ok("conversations", "restore", "--month", month)
        assert again["rows_restored"] == 0 and again["rows_already_present"] == res["rows_in_archive"]
    assert site.rows() == original
    flags = site.sql(
        "SELECT count(*) FILTER (WHERE archived), count(*) FILTER (WHERE archived IS NOT TRUE) FROM conversations"
    )
    assert flags[0][0] == stats["eligible"]
    # restored rows are not archived twice, and a later purge removes them again
    rerun = site.ok("conversations", "archive", "--purge")
    assert rerun["rows_archived"] == 0 and rerun["files"] == 0
    assert rerun["purge"]["rows_deleted"] == stats["eligible"]
    site.check(original, purged=True)
    assert site.ok("conversations", "verify")["ok"]


def test_months_split_at_utc_boundaries(site: ConvSite) -> None:
    edge = [
        ("2025-01-31T23:59:59.999999+00:00", "2025-01"),
        ("2025-02-01T00:00:00+00:00", "2025-02"),
        ("2025-02-01T00:30:00+01:00", "2025-01"),  # 23:30 UTC on Jan 31
        ("2025-02-28T23:00:00-05:00", "2025-03"),  # 04:00 UTC on Mar 1
        ("2024-12-31T23:59:59+00:00", "2024-12"),
    ]
    for ts, _ in edge:
        site.sql("INSERT INTO conversations (timestamp, speaker, content) VALUES (%s, 'user', %s)", (ts, ts))
    site.sql("INSERT INTO conversations (timestamp, content) VALUES (NULL, 'no timestamp: never archived')")
    site.ok("conversations", "archive")
    got = {}
    for path in site.archive_dir.glob("*/*.jsonl.zst"):
        for line in read_lines(path):
            doc = json.loads(line)
            got[doc["content"]] = (path.parent.name, doc["timestamp"][:7])
    assert got == {ts: (month, month) for ts, month in edge}
    assert site.sql("SELECT archived FROM conversations WHERE timestamp IS NULL") == [(False,)]


def test_odd_values_and_a_10_mb_content_round_trip(site: ConvSite) -> None:
    site.load(400, seed=5, big=1)
    original = site.rows()
    big_id = max(i for i, r in original.items() if r[3] is not None and len(r[3]) > 1_000_000)
    site.ok("conversations", "archive", "--purge")
    site.check(original, purged=True)
    got = site.ok("conversations", "get", "--id", str(big_id))
    assert got["rows"][0]["source"] == "archive" and got["rows"][0]["content"] == original[big_id][3]
    for month in months_of(site):
        site.ok("conversations", "restore", "--month", month)
    assert site.rows() == original


def test_null_metadata_and_exact_json_text(site: ConvSite) -> None:
    metas = [None, '{"x": 0.1000000000000000055511151231257827}', '{"n": 1e-7, "big": 1e400}', "null"]
    for m in metas:
        site.sql(
            "INSERT INTO conversations (timestamp, speaker, content, metadata) VALUES (%s, 'user', 'm', %s::jsonb)",
            (NOW - dt.timedelta(days=200), m),
        )
    expected = [r[0] for r in site.sql("SELECT metadata::text FROM conversations ORDER BY id")]
    site.ok("conversations", "archive", "--purge")
    (path,) = site.archive_dir.glob("*/*.jsonl.zst")
    lines = sorted(read_lines(path), key=lambda b: json.loads(b)["id"])
    assert [meta_raw(x).decode() for x in lines] == [e if e is not None else "null" for e in expected]
    assert "0.1000000000000000055511151231257827" in expected[1]
    site.ok("conversations", "restore", "--month", path.parent.name)
    # SQL NULL and the jsonb literal null both archive as `null` and restore as SQL NULL
    assert [r[0] for r in site.sql("SELECT metadata::text FROM conversations ORDER BY id")] == [
        expected[0], expected[1], expected[2], None,
    ]  # fmt: skip


def test_gzip_format_reads_with_zcat(pg_cluster: TempCluster, tmp_path: Path) -> None:
    s = ConvSite(pg_cluster, tmp_path / "s", fmt="jsonl.gz", batch_rows=200).create()
    s.load(800, seed=9)
    original = s.rows()
    s.ok("conversations", "archive", "--purge")
    s.check(original, purged=True)
    files = sorted(s.archive_dir.glob("*/*.jsonl.gz"))
    assert files
    got = subprocess.run(["bash", "-o", "pipefail", "-c", f"zcat {files[0]} | jq -r .id"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert len(got.stdout.split()) > 0
    for month in months_of(s):
        s.ok("conversations", "restore", "--month", month)
    assert s.rows() == original


def test_dry_run_writes_nothing(site: ConvSite) -> None:
    site.load(500, seed=2)
    out = site.ok("conversations", "archive", "--dry-run")
    eligible = site.sql("SELECT count(*) FROM conversations WHERE timestamp < %s", (CUTOFF,))[0][0]
    assert out["rows_archived"] == eligible and out["dry_run"]
    assert site.ledger() == []
    assert not list(site.archive_dir.glob("*/*")) if site.archive_dir.exists() else True
    assert site.sql("SELECT count(*) FROM conversations WHERE archived")[0][0] == 0


def test_older_than_and_batch_rows_options(site: ConvSite) -> None:
    site.load(1000, seed=4)
    original = site.rows()
    out = site.ok("conversations", "archive", "--older-than", "200d", "--batch-rows", "50")
    cutoff = NOW - dt.timedelta(days=200)
    assert all(b["rows"] <= 50 for b in out["batches"])
    site.check(original, cutoff=cutoff, purged=False)
    site.ok("conversations", "archive")
    site.check(original, purged=False)


# ------------------------------------------------------------------------------------------------
# concurrency


def test_rows_inserted_concurrently_are_archived_once(site: ConvSite) -> None:
    site.batch_rows = 100
    site.write_config()
    site.load(4000, seed=6)
    stop = threading.Event()
    inserted: list[int] = []

    def writer() -> None:
        with psycopg.connect(site.dsn, autocommit=True) as conn:
            k = 0
            while not stop.is_set():
                age = dt.timedelta(days=(k * 37) % 300, seconds=k)
                row = conn.execute(
                    "INSERT INTO conversations (session_id, timestamp, speaker, content, metadata) "
                    "VALUES (gen_random_uuid(), %s, 'user', %s, '{\"live\": true}') RETURNING id",
                    (NOW - age, f"live {k}"),
                ).fetchone()
                assert row is not None
                inserted.append(int(row[0]))
                k += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        first = site.ok("conversations", "archive")
    finally:
        stop.set()
        thread.join()
    assert first["rows_archived"] > 0 and len(inserted) > 10
    site.ok("conversations", "archive")  # picks up what arrived late
    site.check(site.rows(), purged=False)
    assert site.ok("conversations", "verify")["ok"]


def test_a_row_edited_while_its_batch_is_written_is_not_half_archived(
    site: ConvSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.load(600, seed=8)
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(site.cache))
    monkeypatch.setenv("COLDKEEP_NOW", NOW.isoformat())
    edited: list[int] = []

    def edit_one(ids: str, **_: object) -> None:
        if edited:
            return
        victim = int(ids.strip("{}").split(",")[0])
        with psycopg.connect(site.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE conversations SET content = 'edited while archiving' WHERE id = %s", (victim,)
            )
        edited.append(victim)

    cfg = config_mod.load(site.config_path)
    result = Archiver(cfg, hooks={"before_commit": edit_one}, committers=1).run()
    assert edited and result.retried_rows >= 1 and result.passes == 2
    lines = site.archived_lines()
    assert json.loads(lines[edited[0]][1])["content"] == "edited while archiving"
    site.check(site.rows(), purged=False)


def test_purge_keeps_rows_changed_after_archiving(site: ConvSite) -> None:
    site.load(500, seed=10)
    original = site.rows()
    site.ok("conversations", "archive")
    victim = site.sql("SELECT min(id) FROM conversations WHERE archived")[0][0]
    site.sql("UPDATE conversations SET content = 'changed later' WHERE id = %s", (victim,))
    out = site.ok("conversations", "archive", "--purge")
    assert out["purge"]["rows_kept"] == 1 and victim in out["purge"]["kept_ids"]
    assert site.sql("SELECT content FROM conversations WHERE id = %s", (victim,)) == [("changed later",)]
    site.check(original, purged=None, changed={victim})


def test_second_run_waits_for_or_is_refused_the_lock(site: ConvSite) -> None:
    site.load(300, seed=11)
    oid = site.sql("SELECT 'conversations'::regclass::oid::bigint")[0][0]
    with psycopg.connect(site.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", ((0x636B0001 << 32) | oid,))
        proc = site.run("conversations", "archive", "--lock-wait", "0")
        assert proc.returncode == 4
        assert "holds the lock" in one_line_error(proc)
        proc = site.run("conversations", "archive", "--lock-wait", "0.5")
        assert proc.returncode == 4
    site.ok("conversations", "archive", "--lock-wait", "0")


# ------------------------------------------------------------------------------------------------
# repository


def test_purge_is_refused_while_the_repository_is_unreachable(
    pg_cluster: TempCluster, tmp_path: Path
) -> None:
    s = ConvSite(pg_cluster, tmp_path / "s", repo_url=f"file://{tmp_path}/no-repo-yet").create(repo=False)
    s.load(500, seed=12)
    original = s.rows()
    proc = s.run("--json", "conversations", "archive", "--purge")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rows_archived"] > 0 and "purge refused" in out["purge"]["refused"]
    assert "not reachable" in out["repository"]["error"]
    s.check(original, purged=False)
    s.ok("repo", "init", as_json=False)
    out = s.ok("conversations", "archive", "--purge")
    assert out["repository"]["stored_files"] == len(s.ledger()) and out["purge"]["rows_deleted"] > 0
    s.check(original, purged=True)
    assert all(b["repo_object"] for b in s.ledger())


def test_get_and_restore_from_the_repository_when_the_archive_disk_is_lost(site: ConvSite) -> None:
    site.load(800, seed=13)
    original = site.rows()
    site.ok("conversations", "archive", "--purge")
    batch = site.ledger()[0]
    (site.archive_dir / batch["file"]).unlink()
    rid = batch["ids"][0]
    got = site.ok("conversations", "get", "--id", str(rid))
    assert got["rows"][0]["source"] == "archive" and got["fetched_from_repository"] == [batch["file"]]
    res = site.ok("conversations", "restore", "--month", batch["month"])
    assert res["rows_restored"] > 0
    assert all(original[i] == site.rows()[i] for i in batch["ids"])
    proc = site.run("conversations", "verify")
    assert proc.returncode == 3 and batch["file"] in proc.stdout


def test_a_damaged_local_archive_file_falls_back_to_the_repository_copy(site: ConvSite) -> None:
    """A corrupt local batch file is not streamed into the table: its SHA-256 is checked first, the
    repository's copy is read instead, and the damaged file is named (issue 17)."""
    site.load(800, seed=15)
    original = site.rows()
    site.ok("conversations", "archive", "--purge")
    batch = site.ledger()[0]
    path = site.archive_dir / batch["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    got = site.ok("conversations", "get", "--id", str(batch["ids"][0]))
    assert got["damaged_locally"] == [batch["file"]] and got["fetched_from_repository"] == [batch["file"]]
    res = site.ok("conversations", "restore", "--month", batch["month"])
    assert res["damaged_locally"] == [batch["file"]] and res["rows_restored"] > 0
    assert all(original[i] == site.rows()[i] for i in batch["ids"])
    human = site.run("conversations", "restore", "--month", batch["month"])
    assert human.returncode == 0 and f"{batch['file']}: the local archive file is damaged" in human.stderr
    assert path.read_bytes() == bytes(data)  # left as it is, for verify to report
    proc = site.run("conversations", "verify")
    assert proc.returncode == 3 and batch["file"] in proc.stdout


def test_get_by_id_and_by_session(site: ConvSite) -> None:
    site.load(600, seed=14)
    original = site.rows()
    site.ok("conversations", "archive", "--purge")
    old_id = min(i for i, r in original.items() if r[1] < CUTOFF)
    new_id = min(i for i, r in original.items() if r[1] >= CUTOFF)
    a = site.ok("conversations", "get", "--id", str(old_id))["rows"][0]
    b = site.ok("conversations", "get", "--id", str(new_id))["rows"][0]
    assert (a["source"], a["content"]) == ("archive", original[old_id][3])
    assert (b["source"], b["content"]) == ("table", original[new_id][3])
    sessions = {}
    for i, r in original.items():
        if r[0] is not None:
            sessions.setdefault(r[0], set()).add(i)
    mixed = next(s for s, ids in sessions.items() if {original[i][1] < CUTOFF for i in ids} == {True, False})
    got = site.ok("conversations", "get", "--session", mixed)
    assert {r["id"] for r in got["rows"]} == sessions[mixed]
    assert got["from_table"] > 0 and got["from_archive"] > 0
    proc = site.run("conversations", "get", "--id", "999999999")
    assert proc.returncode == 5
    proc = site.run("conversations", "get", "--session", "not-a-uuid")
    assert proc.returncode == 2
    res = site.ok("conversations", "restore", "--session", mixed)
    assert res["rows_restored"] == sum(1 for i in sessions[mixed] if original[i][1] < CUTOFF)
    assert all(site.rows()[i] == original[i] for i in sessions[mixed])


def test_compact_merges_a_finished_month(site: ConvSite) -> None:
    site.batch_rows = 40
    site.write_config()
    site.load(1200, seed=15)
    original = site.rows()
    site.ok("conversations", "archive")
    site.ok("conversations", "archive", "--purge", "--older-than", "60d")  # purge part of it
    before = site.ledger()
    month = next(
        m for m in months_of(site) if sum(1 for b in before if b["month"] == m) > 2 and m < "2025-10"
    )
    rows = sum(b["row_count"] for b in before if b["month"] == month)
    out = site.ok("conversations", "compact", "--month", month)
    assert (
        out["compacted"] and out["file"] == f"{month}/conversations_{month}.jsonl.zst" and out["rows"] == rows
    )
    after = [b for b in site.ledger() if b["month"] == month]
    assert len(after) == 1 and after[0]["kind"] == "compacted" and after[0]["repo_object"]
    assert sorted(p.name for p in (site.archive_dir / month).iterdir()) == [
        f"conversations_{month}.jsonl.zst"
    ]
    got = subprocess.run(["bash", "-o", "pipefail", "-c", f"zstdcat {site.archive_dir}/{out['file']} | jq -r .id | wc -l"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert int(got.stdout) == rows
    site.check(original, purged=None, cutoff=NOW - dt.timedelta(days=60))
    assert site.ok("conversations", "verify")["ok"]
    assert not site.ok("conversations", "compact", "--month", month)["compacted"]
    proc = site.run("conversations", "compact", "--month", NOW.strftime("%Y-%m"))
    assert proc.returncode == 2
    restored = site.ok("conversations", "restore", "--month", month)
    assert restored["files"] == [out["file"]]


# ------------------------------------------------------------------------------------------------
# verify and stats


def test_verify_finds_every_kind_of_mismatch(site: ConvSite) -> None:
    site.load(900, seed=16)
    site.ok("conversations", "archive")
    assert site.ok("conversations", "verify", "--repo")["ok"]
    ledger = site.ledger()
    # a flipped byte in a batch file
    path = site.archive_dir / ledger[0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = site.run("--json", "conversations", "verify")
    assert proc.returncode == 3
    assert any(ledger[0]["file"] in p for p in json.loads(proc.stdout)["problems"])
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    assert site.run("conversations", "verify").returncode == 3
    # a row unmarked behind coldkeep's back would be archived twice
    victim = ledger[1]["ids"][0]
    site.sql("UPDATE conversations SET archived = false WHERE id = %s", (victim,))
    out = json.loads(site.run("--json", "conversations", "verify").stdout)
    assert any("not marked archived" in p and str(victim) in p for p in out["problems"])
    # a row archived by some other tool
    site.sql(
        "UPDATE conversations SET archived = true, archive_file = 'legacy.jsonl.gz' WHERE id = "
        "(SELECT min(id) FROM conversations WHERE archived IS NOT TRUE)"
    )
    out = json.loads(site.run("--json", "conversations", "verify").stdout)
    assert any("in no ledger batch" in p for p in out["problems"])


def test_stats_per_month(site: ConvSite) -> None:
    site.load(1000, seed=17)
    site.ok("conversations", "archive", "--older-than", "200d", "--purge")
    site.ok("conversations", "archive")
    out = site.ok("conversations", "stats")
    totals = out["totals"]
    counts = site.sql(
        "SELECT count(*) FILTER (WHERE timestamp >= %s), count(*) FILTER (WHERE timestamp < %s AND timestamp >= %s) "
        "FROM conversations",
        (CUTOFF, CUTOFF, NOW - dt.timedelta(days=200)),
    )[0]
    assert totals["hot"] == counts[0] and totals["archived"] == counts[1]
    assert totals["purged"] == sum(b["row_count"] for b in site.ledger()) - counts[1]
    assert totals["bytes"] == sum(b["bytes"] for b in site.ledger())
    human = site.run("conversations", "stats")
    assert human.returncode == 0 and "total" in human.stdout


def test_an_archive_dir_belongs_to_one_table(pg_cluster: TempCluster, tmp_path: Path, site: ConvSite) -> None:
    site.load(200, seed=18)
    site.ok("conversations", "archive")
    other = ConvSite(pg_cluster, tmp_path / "other", dbname="conv2").create()
    other.archive_dir = site.archive_dir
    other.write_config()
    other.load(200, seed=19)
    proc = other.run("conversations", "archive")
    assert proc.returncode == 2
    assert "belongs to another archive" in one_line_error(proc)
