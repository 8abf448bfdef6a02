"""``backup_manifest`` checks: CRC32C as PostgreSQL writes it, SHA-256 for older backups."""

from __future__ import annotations

import hashlib

from coldkeep.postgres.basebackup import FileHash, check_manifest, file_hash, manifest_crc


def test_crc32c_is_written_like_postgresql_writes_it() -> None:
    # CRC-32C check value of "123456789" is 0xE3069283; pg_checksum_final copies the uint32 in
    # memory order (little-endian) and backup_manifest hex-encodes those bytes
    assert manifest_crc(0xE3069283) == "839206e3"
    assert file_hash(b"123456789") == (hashlib.sha256(b"123456789").hexdigest(), "839206e3")
    assert file_hash(b"") == (hashlib.sha256(b"").hexdigest(), "00000000")


def test_incremental_hash_equals_one_shot() -> None:
    data = bytes(range(256)) * 5000
    fh = FileHash()
    for i in range(0, len(data), 7919):
        fh.update(memoryview(data)[i : i + 7919])
    assert fh.result() == file_hash(data)


def test_manifest_mismatches_are_named() -> None:
    a_sha, a_crc = file_hash(b"aaaa")
    manifest = {
        "Files": [
            {"Path": "base/1/1", "Size": 4, "Checksum-Algorithm": "CRC32C", "Checksum": a_crc},
            {"Path": "base/1/2", "Size": 4, "Checksum-Algorithm": "CRC32C", "Checksum": a_crc},
            {"Path": "base/1/3", "Size": 4, "Checksum-Algorithm": "SHA256", "Checksum": a_sha},
            {"Path": "base/1/4", "Size": 4, "Checksum-Algorithm": "SHA256", "Checksum": a_sha},
            {"Path": "base/1/5", "Size": 4, "Checksum-Algorithm": "SHA512", "Checksum": "00"},
            {"Path": "base/1/6", "Size": 5, "Checksum-Algorithm": "NONE"},
            {"Path": "gone", "Size": 1, "Checksum-Algorithm": "NONE"},
        ]
    }
    b_sha, b_crc = file_hash(b"aaab")
    files = {
        "base/1/1": (4, a_sha, a_crc),
        "base/1/2": (4, b_sha, b_crc),
        "base/1/3": (4, a_sha, a_crc),
        "base/1/4": (4, b_sha, b_crc),
        "base/1/5": (4, a_sha, a_crc),
        "base/1/6": (4, a_sha, a_crc),
        "extra": (1, a_sha, a_crc),
        "backup_manifest": (10, a_sha, a_crc),
    }
    assert check_manifest(manifest, files) == [
        "base/1/2: CRC32C differs from backup_manifest",
        "base/1/4: SHA-256 differs from backup_manifest",
        "base/1/5: backup_manifest checksum algorithm SHA512 is not checked by coldkeep",
        "base/1/6: size 4 != manifest 5",
        "gone: in backup_manifest but not in the backup",
        "extra: in the backup but not in backup_manifest",
    ]
