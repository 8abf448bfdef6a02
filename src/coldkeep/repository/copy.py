"""``repo copy --to NAME`` and ``repo repair --from NAME``.

A copy holds the same objects under the same keys (same repository id and keys, so encrypted
data moves without re-encryption).  Copying is incremental and verifying: each object missing at
the destination is read from the source, its footer digest (and, for content-addressed objects,
its name) checked, written with ``put_if_absent``, and its size checked at the destination.
Order: packs, named objects, indexes, snapshots, so that a killed copy leaves the destination
consistent (a snapshot arrives only after everything it needs).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import ColdkeepError, IntegrityError, ObjectNotFound, RepositoryError
from coldkeep.repository.format import (
    CONFIG_KEY,
    INDEX_PREFIX,
    KEYS_PREFIX,
    NAMED_PREFIX,
    PACK_PREFIX,
    SNAPSHOT_PREFIX,
    object_id,
    strip_footer,
)
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import parse_pack
from coldkeep.repository.repository import Repository
from coldkeep.storage.base import Backend

CONTENT_ADDRESSED = (PACK_PREFIX, INDEX_PREFIX, SNAPSHOT_PREFIX)


@dataclass
class CopyResult:
    copied: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "bytes": self.bytes, "already_there": self.skipped}


def _verify(key: str, data: bytes) -> None:
    strip_footer(data, key)
    if key.startswith(CONTENT_ADDRESSED) and object_id(data) != key.split("/")[-1]:
        raise IntegrityError(f"{key}: content does not match its name")


def copy_to(
    src: Repository, dst: Backend, *, on_progress: Callable[[str, int], None] | None = None
) -> CopyResult:
    result = CopyResult()
    if dst.exists(CONFIG_KEY):
        dst_config = Repository.read_config(dst)
        if dst_config.id != src.config.id:
            raise RepositoryError(
                f"{dst.describe()} holds another repository ({dst_config.id[:8]}, not {src.config.id[:8]})",
                hint="copy into an empty location or the copy made from this repository",
            )
    else:
        for info in src.backend.list(KEYS_PREFIX):
            dst.put_if_absent(info.key, src.backend.get(info.key))
        data = src.backend.get(CONFIG_KEY)
        _verify(CONFIG_KEY, data)
        dst.put_if_absent(CONFIG_KEY, data)
    for info in src.backend.list(KEYS_PREFIX):  # passphrases added later
        if not dst.exists(info.key):
            dst.put_if_absent(info.key, src.backend.get(info.key))
    with locked(dst, "copy", exclusive=False):
        for prefix in (PACK_PREFIX, NAMED_PREFIX, INDEX_PREFIX, SNAPSHOT_PREFIX):
            have = {info.key: info.size for info in dst.list(prefix)}
            todo = [info for info in src.backend.list(prefix) if info.key not in have]
            result.skipped += sum(1 for info in src.backend.list(prefix) if info.key in have)

            def one(key: str) -> int:
                data = src.backend.get(key)
                _verify(key, data)
                dst.put_if_absent(key, data)
                if dst.stat(key).size != len(data):
                    raise IntegrityError(f"{key}: size differs at the destination after copy")
                return len(data)

            with ThreadPoolExecutor(max_workers=4) as pool:
                for info, nbytes in zip(todo, pool.map(one, [i.key for i in todo]), strict=True):
                    result.bytes += nbytes
                    result.copied[prefix.rstrip("/")] = result.copied.get(prefix.rstrip("/"), 0) + 1
                    if on_progress is not None:
                        on_progress(info.key, nbytes)
    return result


def repair_from(repo: Repository, source: Backend, damaged_packs: list[str]) -> list[str]:
    """Replace damaged or missing packs with verified copies; returns the keys repaired."""
    repaired = []
    for key in damaged_packs:
        pack_id = key.split("/")[-1]
        try:
            data = source.get(key)
        except ObjectNotFound:
            raise RepositoryError(
                f"{key}: not in the copy either", hint="the data is lost unless another copy has it"
            ) from None
        try:
            _verify(key, data)
            parse_pack(repo.keys, data, pack_id)
        except ColdkeepError as exc:
            raise IntegrityError(f"{key}: the copy is damaged too ({exc.message})") from None
        repo.backend.put(key, data)
        repaired.append(key)
    return repaired
