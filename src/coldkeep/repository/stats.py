"""``repo stats``: logical vs stored bytes, dedup and compression ratios, per tag."""

from __future__ import annotations

from typing import Any

from coldkeep.repository.format import NAMED_PREFIX, PACK_PREFIX
from coldkeep.repository.repository import Repository


def stats(repo: Repository) -> dict[str, Any]:
    snaps = repo.list_snapshots()
    logical = sum(s.logical_bytes for s in snaps)
    pack_bytes = sum(info.size for info in repo.backend.list(PACK_PREFIX))
    named_bytes = sum(info.size for info in repo.backend.list(NAMED_PREFIX))
    raw_unique = 0
    stored_unique = 0
    for blob in repo.refresh_cache().all_blobs():
        raw_unique += blob.raw_length
        stored_unique += blob.length
    per_tag: dict[str, dict[str, int]] = {}
    for s in snaps:
        for k, v in s.tags.items():
            row = per_tag.setdefault(f"{k}={v}", {"snapshots": 0, "logical_bytes": 0})
            row["snapshots"] += 1
            row["logical_bytes"] += s.logical_bytes
    return {
        "snapshots": len(snaps),
        "logical_bytes": logical,
        "stored_bytes": pack_bytes + named_bytes,
        "pack_bytes": pack_bytes,
        "named_bytes": named_bytes,
        "unique_raw_bytes": raw_unique,
        "dedup_ratio": (logical / raw_unique) if raw_unique else 1.0,
        "compression_ratio": (raw_unique / stored_unique) if stored_unique else 1.0,
        "per_tag": per_tag,
    }
