"""``repo rebuild-index``: a new index from the packs alone (every pack carries its own header)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import ColdkeepError
from coldkeep.repository.format import INDEX_PREFIX, PACK_PREFIX
from coldkeep.repository.index import encode_index
from coldkeep.repository.locks import locked
from coldkeep.repository.packer import TAIL, BlobEntry, pack_key, parse_header, parse_tail
from coldkeep.repository.repository import Repository


@dataclass
class RebuildResult:
    packs: int = 0
    blobs: int = 0
    unreadable: list[str] = field(default_factory=list)
    index_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rebuild_index(repo: Repository) -> RebuildResult:
    """Read every pack's header and write one index that lists them all, then drop the old index
    documents (under the exclusive lock).  Unreadable packs are reported, not indexed."""
    result = RebuildResult()
    with locked(repo.backend, "rebuild-index", exclusive=True):
        packs: dict[str, list[BlobEntry]] = {}
        sizes: dict[str, int] = {}
        for info in repo.backend.list(PACK_PREFIX):
            pack_id = info.key.rsplit("/", 1)[-1]
            try:
                tail = repo.backend.get_range(pack_key(pack_id), info.size - TAIL, TAIL)
                header_len = parse_tail(tail, pack_id)
                start = info.size - TAIL - header_len
                header = repo.backend.get_range(pack_key(pack_id), start, header_len)
                entries = parse_header(repo.keys, header, pack_id, info.size)
            except ColdkeepError as exc:
                result.unreadable.append(f"{info.key}: {exc.message}")
                continue
            packs[pack_id] = entries
            sizes[pack_id] = info.size
            result.blobs += len(entries)
        result.packs = len(packs)
        old = [info.key for info in repo.backend.list(INDEX_PREFIX)]
        if packs:
            index_id, data = encode_index(repo.keys, packs, sizes)
            repo.backend.put_if_absent(INDEX_PREFIX + index_id, data)
            result.index_id = index_id
        for key in old:
            if key != INDEX_PREFIX + (result.index_id or ""):
                repo.backend.delete(key)
        repo.refresh_cache(full=True)
    return result
