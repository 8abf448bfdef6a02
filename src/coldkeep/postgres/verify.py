"""``pg verify``: every file of a base backup against its ``backup_manifest``, and the WAL chain
from the backup's start to the newest archived segment (gaps and timeline switches reported)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from coldkeep import clock
from coldkeep.errors import ColdkeepError
from coldkeep.postgres import catalog, walchain
from coldkeep.postgres.basebackup import FileHash, checksum_problem
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot


@dataclass
class VerifyResult:
    backup_id: str
    ok: bool = True
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    wal: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify_backup(repo: Repository, snap: Snapshot) -> VerifyResult:
    """Verify ``snap`` under a shared lock and record the result in the backup-status record."""
    with locked(repo.backend, "pg verify", exclusive=False):
        return _verify(repo, snap)


def _verify(repo: Repository, snap: Snapshot) -> VerifyResult:
    result = VerifyResult(backup_id=snap.id)
    entries = {e["path"]: e for e in repo.iter_tree(snap)}
    #: path -> (size, SHA-256, CRC32C) of the bytes read back, for every file that could be read
    computed: dict[str, tuple[int, str, str]] = {}
    manifest_entry = entries.get("backup_manifest")
    manifest: dict[str, Any] = {}
    if manifest_entry is None:
        result.problems.append("backup_manifest missing from the backup")
    for path, entry in entries.items():
        if entry.get("type") != "file":
            continue
        sha = FileHash()
        size = 0
        try:
            parts = []
            for chunk_hex in entry.get("chunks", []):
                data = repo.read_blob(bytes.fromhex(chunk_hex))
                sha.update(data)
                size += len(data)
                if path == "backup_manifest":
                    parts.append(data)
            if path == "backup_manifest":
                manifest = json.loads(b"".join(parts))
        except ColdkeepError as exc:
            result.problems.append(f"{path}: {exc.message}")
            continue
        sha_hex, crc_hex = sha.result()
        if sha_hex != entry.get("sha256") or size != entry.get("size"):
            result.problems.append(f"{path}: content differs from the snapshot's record")
        result.files_checked += 1
        result.bytes_checked += size
        computed[path] = (size, sha_hex, crc_hex)
    for item in manifest.get("Files", []):
        listed = entries.get(item["Path"])
        if listed is None:
            result.problems.append(f"{item['Path']}: listed in backup_manifest but missing")
            continue
        # all None: not a file, or it could not be read (reported above)
        got: tuple[int | None, str | None, str | None] = computed.get(item["Path"]) or (None, None, None)
        if got[0] != int(item["Size"]):
            result.problems.append(f"{item['Path']}: size differs from backup_manifest")
        problem = checksum_problem(item["Path"], item, str(got[1]), str(got[2]))
        if problem:
            result.problems.append(problem)
    chain = walchain.check_chain(
        repo,
        str(snap.meta["wal_lineage"]),
        int(snap.meta["timeline"]),
        str(snap.meta["start_wal"]),
        str(snap.meta["stop_wal"]),
        int(snap.meta.get("wal_segment_size", 16 * 1024 * 1024)),
    )
    result.wal = chain
    result.problems.extend(chain["problems"])
    result.ok = not result.problems
    catalog.record_status(repo, snap.id, verify_ok=result.ok, verified_at=clock.isoformat(clock.now()),
                          verify_problems=result.problems[:20])  # fmt: skip
    return result
