"""Mutable records (``state/``) under concurrent writers: no update is ever lost.

Eight writers (threads of one process, or processes) each add twenty distinct keys to one record
through ``Repository.update_state``; all 160 must be there afterwards.  The same for the real
records: the backup-status record (``pg verify`` / ``pg restore-test`` results) and the WAL
lineages (``pg setup``).  Against the local backend and a real S3-protocol server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.s3 import S3Proxy

from coldkeep.postgres import archive, catalog
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.repository import Repository
from coldkeep.storage import open_backend
from coldkeep.storage.s3 import S3Backend

WRITERS = 8
UPDATES = 20
FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
PASSPHRASE = "correct horse battery staple"

#: one writer process: URL, endpoint, passphrase, writer number
WRITER_SCRIPT = """
import sys
from coldkeep.repository.repository import Repository
from coldkeep.storage import open_backend

url, endpoint, passphrase, writer = sys.argv[1:5]
with Repository.open(open_backend(url, endpoint_url=endpoint), passphrase or None) as repo:
    for i in range(int(sys.argv[5])):
        key = f"w{writer}-{i}"
        repo.update_state("shared", lambda doc, key=key: {**(doc or {}), key: True})
"""


def in_threads(fn: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def body(n: int) -> None:
        try:
            start.wait()
            fn(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(repository URL, endpoint URL) of an empty location."""
    if request.param == "local":
        return f"file://{tmp_path}/repo", ""
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/repo", endpoint


def open_repo(where: tuple[str, str], passphrase: str | None = None) -> Repository:
    return Repository.open(open_backend(where[0], endpoint_url=where[1]), passphrase)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_writers_in_threads_lose_no_update(where: tuple[str, str], encrypted: bool) -> None:
    passphrase = PASSPHRASE if encrypted else None
    Repository.init(open_backend(where[0], endpoint_url=where[1], create=True), passphrase=passphrase,
                    kdf_params=FAST_KDF).close()  # fmt: skip
    repos = [open_repo(where, passphrase) for _ in range(WRITERS)]  # a backend (client) each

    def writer(n: int) -> None:
        for i in range(UPDATES):
            repos[n].update_state("shared", lambda doc, key=f"w{n}-{i}": {**(doc or {}), key: True})

    in_threads(writer)
    doc = repos[0].get_state("shared") or {}
    assert sorted(doc) == sorted(f"w{n}-{i}" for n in range(WRITERS) for i in range(UPDATES))
    for repo in repos:
        repo.close()


def test_writer_processes_lose_no_update(where: tuple[str, str], tmp_path: Path) -> None:
    Repository.init(open_backend(where[0], endpoint_url=where[1], create=True)).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, where[0], where[1], "", str(n), str(UPDATES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with open_repo(where) as repo:
        doc = repo.get_state("shared") or {}
    assert sorted(doc) == sorted(f"w{n}-{i}" for n in range(WRITERS) for i in range(UPDATES))


def test_backup_status_records_of_concurrent_verifies_are_all_kept(where: tuple[str, str]) -> None:
    """`pg verify` and `pg restore-test` record their results in one document."""
    Repository.init(open_backend(where[0], endpoint_url=where[1], create=True)).close()
    repos = [open_repo(where) for _ in range(WRITERS)]

    def writer(n: int) -> None:
        for i in range(UPDATES):
            catalog.record_status(repos[n], f"backup-{n}-{i}", verify_ok=True, verified_at=f"{n}.{i}")
            catalog.record_status(repos[n], "shared-backup", **{f"check_{n}": i})

    in_threads(writer)
    status = catalog.statuses(repos[0])
    assert {b for b in status if b != "shared-backup"} == {
        f"backup-{n}-{i}" for n in range(WRITERS) for i in range(UPDATES)
    }
    assert all(
        status[f"backup-{n}-{i}"]["verified_at"] == f"{n}.{i}" for n in range(WRITERS) for i in range(UPDATES)
    )
    assert status["shared-backup"] == {f"check_{n}": UPDATES - 1 for n in range(WRITERS)}
    for repo in repos:
        repo.close()


def test_concurrent_pg_setups_record_each_lineage_once(where: tuple[str, str]) -> None:
    """The first lineage is recorded once however many `pg setup` race; new lineages appended at
    once (one per new system identifier) are all kept."""
    Repository.init(open_backend(where[0], endpoint_url=where[1], create=True)).close()
    repos = [open_repo(where) for _ in range(WRITERS)]
    results: list[tuple[dict[str, Any], bool]] = []
    in_threads(lambda n: results.append(archive.record_system_identifier(repos[n], 7000)))
    assert [changed for _, changed in results].count(True) == 1
    recorded = archive.lineages(repos[0])
    assert len(recorded) == 1 and recorded[0]["prefix"] == "wal"
    assert all(entry == recorded[0] for entry, _ in results)  # every run reports the one recorded
    in_threads(lambda n: archive.record_system_identifier(repos[n], 8000 + n, new_lineage=True))
    lineages = archive.lineages(repos[0])
    assert lineages[0]["system_identifier"] == 7000 and lineages[0]["prefix"] == "wal"
    assert sorted(int(item["system_identifier"]) for item in lineages[1:]) == [
        8000 + n for n in range(WRITERS)
    ]
    assert sorted(item["prefix"] for item in lineages[1:]) == sorted(
        f"wal-{8000 + n}" for n in range(WRITERS)
    )
    for repo in repos:
        repo.close()


def test_change_that_raises_or_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    repo = Repository.init(open_backend(f"file://{tmp_path}/repo", create=True))
    assert repo.update_state("rec", lambda doc: {"a": 1}) == {"a": 1}
    version = repo.backend.get_version("state/rec")[1]
    assert repo.update_state("rec", lambda doc: None) == {"a": 1}

    def refuse(doc: dict[str, Any] | None) -> dict[str, Any]:
        raise archive.OtherCluster(recorded=1, found=2)

    with pytest.raises(archive.OtherCluster):
        repo.update_state("rec", refuse)
    assert repo.backend.get_version("state/rec")[1] == version
    repo.close()


@pytest.mark.s3
def test_s3_without_if_match_falls_back_and_says_so(s3_proxy: S3Proxy, s3_bucket: tuple[str, str]) -> None:
    """A server that answers 501 to ``If-Match`` still gets the update (read, compare, put),
    and the backend stops claiming an atomic compare-and-swap."""
    _, bucket = s3_bucket
    s3_proxy.rules.append(lambda method, path, headers: (501, "NotImplemented") if method == "PUT"
                          and "If-Match" in headers else None)  # fmt: skip
    backend = S3Backend(bucket, "repo", s3_proxy.endpoint_url, "us-east-1")
    assert backend.capabilities.atomic_update
    assert backend.put_if_version("state/x", b"one", None)
    _, version = backend.get_version("state/x")
    assert backend.put_if_version("state/x", b"two", version)
    assert not backend.capabilities.atomic_update
    assert backend.get("state/x") == b"two"
    assert not backend.put_if_version("state/x", b"three", version)  # stale version: refused
    assert backend.get("state/x") == b"two"
    backend.close()
