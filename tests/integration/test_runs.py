"""Run records (coldkeep.ops.runs): every job records one run in the repository, the offsite copy
carries them, concurrent writers never lose one, and `coldkeep runs` lists them."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.helpers import Site, flip_byte, make_tree

from coldkeep.errors import EXIT_INTEGRITY, EXIT_NOT_FOUND, EXIT_PARTIAL, NotFound
from coldkeep.ops import runs as runs_mod
from coldkeep.ops.runs import RunRecord, list_records, recording, write_record
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


def _runs(site: Site, *args: str) -> list[dict[str, object]]:
    return list(site.json("runs", *args))


def _record_files(repo_dir: Path) -> list[Path]:
    return sorted(p for p in (repo_dir / "named" / "runs").glob("*") if not p.name.startswith(".tmp-"))


def test_file_backup_check_and_copy_record_their_runs_and_the_copy_carries_them(tmp_path: Path) -> None:
    copy_dir = tmp_path / "offsite"
    site = Site(tmp_path / "site", copies={"offsite": {"url": f"file://{copy_dir}"}})
    site.ok("repo", "init")
    data = make_tree(tmp_path / "data", seed=3, small_files=4, big_sizes=(1000,))
    backup = site.json("backup", str(data))
    missing = site.run("backup", str(tmp_path / "no-such-dir"))
    assert missing.returncode != 0
    site.ok("repo", "check")
    site.ok("repo", "copy", "--to", "offsite")
    wrong = site.run("repo", "copy", "--to", "nowhere")
    assert wrong.returncode == EXIT_NOT_FOUND

    records = _runs(site)
    assert [(r["job"], r["result"]) for r in records] == [
        ("backup", "ok"),
        ("backup", "failed"),
        ("repo check", "ok"),
        ("repo copy", "ok"),
        ("repo copy", "failed"),
    ]
    ok = records[0]
    assert ok["logical_bytes"] == backup["logical_bytes"] and ok["new_bytes"] == backup["new_stored_bytes"]
    assert ok["figures"]["snapshot_id"] == backup["snapshot_id"]  # type: ignore[index]
    assert records[1]["error_class"] == "NotFound" and records[1]["exit_code"] == EXIT_NOT_FOUND
    assert records[3]["target"] == "offsite" and records[3]["type"] == "repo_copy_offsite"
    assert records[4]["error_class"] == "NotFound" and records[4]["target"] == "nowhere"
    assert all(r["end"] >= r["start"] and r["host"] == socket.gethostname() for r in records)
    assert len(_record_files(site.repo_dir)) == 5  # one write-once object per run

    assert [r["job"] for r in _runs(site, "--job", "repo_copy")] == ["repo copy", "repo copy"]
    assert [r["job"] for r in _runs(site, "--job", "backup")] == ["backup", "backup"]
    assert _runs(site, "--since", "2099-01-01") == []
    assert len(_runs(site, "--since", "1d")) == 5

    # the records are named objects: `repo check --read-data` verifies them, `repo copy` carries them
    assert site.json("repo", "check", "--read-data")["ok"]
    site.ok("repo", "copy", "--to", "offsite")
    offsite = Site(tmp_path / "offsite-view", url=f"file://{copy_dir}")
    carried = [(r["job"], r["result"], r["name"]) for r in _runs(offsite)]
    # every run, the copy's own included (`repo copy` leaves its record in the copy it made)
    assert carried == [(r["job"], r["result"], r["name"]) for r in _runs(site)]
    assert site.json("repo", "copy", "--to", "offsite")["copied"] == {}  # nothing new since

    # a damaged record is named by `repo check --read-data` (exit 3) and skipped by `runs`
    flip_byte(_record_files(site.repo_dir)[0])
    damaged = site.run("--json", "repo", "check", "--read-data")
    assert damaged.returncode == EXIT_INTEGRITY
    assert any(p["object"].startswith("runs/") for p in json.loads(damaged.stdout)["problems"])


def test_a_run_the_repository_cannot_take_is_kept_locally_and_written_by_the_next(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", env={"COLDKEEP_PASSWORD": "right"})
    site.ok("repo", "init")
    data = make_tree(tmp_path / "data", seed=5, small_files=2, big_sizes=(100,))
    wrong = site.run("backup", str(data), env={"COLDKEEP_PASSWORD": "wrong"})
    assert wrong.returncode != 0
    assert _record_files(site.repo_dir) == []
    pending = _runs(site)
    assert [(r["job"], r["result"], r.get("pending")) for r in pending] == [("backup", "failed", True)]
    assert pending[0]["error_class"] == "WrongPassword"

    site.ok("backup", str(data))  # writes the kept record first, then its own
    records = _runs(site)
    assert [(r["job"], r["result"], r.get("pending", False)) for r in records] == [
        ("backup", "failed", False),
        ("backup", "ok", False),
    ]
    assert len(_record_files(site.repo_dir)) == 2


def test_concurrent_jobs_each_record_their_run(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    procs = [site.popen("repo", "check") for _ in range(6)]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    records = _runs(site)
    assert [r["job"] for r in records] == ["repo check"] * 6
    assert len({r["name"] for r in records}) == 6


# ------------------------------------------------------------------------------------------------
# the Python API the services call


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    return Repository.init(LocalBackend(tmp_path / "repo"), passphrase=None, kdf_params=FAST_KDF)


class _Section:
    def __init__(self, url: str) -> None:
        self.url = url
        self.endpoint_url = ""
        self.region = ""
        self.owner = ""
        self.password_file = ""
        self.connect_timeout = 5.0
        self.read_timeout = 15.0


def test_recording_api_results_errors_and_figures(repo: Repository, tmp_path: Path) -> None:
    section = _Section(f"file://{tmp_path / 'repo'}")
    seen: list[tuple[str, bool]] = []

    def after(record: RunRecord, opened: Repository | None) -> None:
        seen.append((record.result, opened is not None))

    with recording("checkpoints archive", section, after=after) as run:
        run.attach(repo)
        run.set(logical_bytes=10, new_bytes=4, archived=3)
    with recording("datasets snapshot", section) as run:
        run.exit_code = EXIT_PARTIAL
    with pytest.raises(NotFound), recording("checkpoints backup", section):
        raise NotFound("no checkpoint phase9")
    records = list_records(repo)
    assert [(r.job, r.result, r.error_class) for r in records] == [
        ("checkpoints archive", "ok", ""),
        ("datasets snapshot", "partial", ""),
        ("checkpoints backup", "failed", "NotFound"),
    ]
    assert (records[0].logical_bytes, records[0].new_bytes, records[0].figures) == (10, 4, {"archived": 3})
    assert records[2].error == "no checkpoint phase9" and records[2].exit_code == EXIT_NOT_FOUND
    assert seen == [("ok", True)]


def test_a_thousand_records_are_listed_from_the_cache_after_one_read_each(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(1000):
        t = start + timedelta(hours=i)
        write_record(repo, RunRecord(job="pg backup", start=t, end=t + timedelta(seconds=30), result="ok"))
    gets: list[str] = []
    real_get = repo.backend.get

    def counting_get(key: str) -> bytes:
        gets.append(key)
        return real_get(key)

    monkeypatch.setattr(repo.backend, "get", counting_get)
    first = list_records(repo)
    assert len(first) == 1000 and len(gets) == 1000
    assert [r.start for r in first] == sorted(r.start for r in first)
    gets.clear()
    again = list_records(repo)  # one LIST, no GET: every record is in the local cache
    assert gets == [] and [r.name for r in again] == [r.name for r in first]
    assert runs_mod.filter_records(again, job="pg_backup", since=start + timedelta(hours=990))[0].start == (
        start + timedelta(hours=990)
    )


def test_figures_from_a_result_keep_scalars_and_mask_url_passwords() -> None:
    run = runs_mod.Run("repo copy", datetime(2026, 1, 1, tzinfo=UTC))
    run.set_from_result({"url": "s3://key:secret@host/bucket", "bytes": 7, "copied": {"packs": 1},
                         "warnings": ["a", "b"], "ok": True})  # fmt: skip
    assert run.figures == {"url": "s3://key:***@host/bucket", "bytes": 7, "warnings_count": 2, "ok": True}
    assert (run.logical_bytes, run.new_bytes) == (None, 7)
