"""Reading blobs back: ranged reads of packs, each blob opened and verified against its id.

Every read checks the repository lock first (a reader whose lock was lost stops rather than
blame the repository for packs a prune removed), fetches the stored bytes with a ranged read and
opens them: envelope (authenticated when encrypted), decompression, length, and the content's
keyed hash against the blob id.  Blobs that lie close together in one pack are fetched with one
request (:func:`read_blobs`, :func:`read_blob_run`); :func:`plan_runs` groups a file's chunks
into such requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from coldkeep.errors import IntegrityError, ObjectNotFound
from coldkeep.repository.format import open_blob
from coldkeep.repository.packer import BlobEntry, pack_key

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository

#: neighbouring blobs of one pack closer than this are read in one request (:func:`read_blobs`)
READ_GAP = 64 * 1024
#: the most bytes one such request reads
READ_SPAN = 8 * 1024 * 1024
#: a run of a file's chunks (read with one request, :func:`plan_runs`) covers at most this many
#: stored bytes and holds at most this many bytes of content
RUN_BYTES = 2 * 1024 * 1024

#: chunks of one pack read with one request, each with its location
Run = list[tuple[bytes, BlobEntry]]


def read_blob(repo: Repository, blob_id: bytes, entry: BlobEntry | None = None) -> bytes:
    """Read, decrypt, decompress and verify one blob (its id must match its content)."""
    entry = entry or repo.cache.get(blob_id)
    if entry is None:
        raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
    return open_stored(repo, blob_id, entry, get_range(repo, blob_id, entry, entry.length))


def read_blobs(repo: Repository, blob_ids: Sequence[bytes]) -> Iterator[bytes]:
    """The verified contents of ``blob_ids``, in order (each checked as by :func:`read_blob`).

    The locations come from one index query per batch, and blobs that lie next to each other
    in one pack (the tree blobs of a snapshot, say) are fetched in one request.
    """
    located = repo.cache.get_many(blob_ids)
    i, n = 0, len(blob_ids)
    while i < n:
        first = located.get(blob_ids[i])
        if first is None:
            raise IntegrityError(f"blob {blob_ids[i].hex()[:16]} is not in the index")
        j, end = i + 1, first.offset + first.length
        while j < n:
            nxt = located.get(blob_ids[j])
            if (
                nxt is None
                or nxt.pack != first.pack
                or not end <= nxt.offset <= end + READ_GAP
                or nxt.offset + nxt.length - first.offset > READ_SPAN
            ):
                break
            end = nxt.offset + nxt.length
            j += 1
        if j == i + 1:
            yield open_stored(repo, blob_ids[i], first, get_range(repo, blob_ids[i], first, first.length))
        else:
            span = get_range(repo, blob_ids[i], first, end - first.offset)
            for blob_id in blob_ids[i:j]:
                entry = located[blob_id]
                start = entry.offset - first.offset
                yield open_stored(repo, blob_id, entry, span[start : start + entry.length])
        i = j


def get_range(repo: Repository, blob_id: bytes, entry: BlobEntry, length: int) -> bytes:
    """``length`` bytes of ``entry``'s pack from where the blob starts."""
    repo.check_lock()
    try:
        stored = repo.backend.get_range(pack_key(entry.pack), entry.offset, length)
    except ObjectNotFound:
        repo.check_lock(confirm=True)  # removed by a prune that took our lost lock for stale: not damage
        raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}: pack missing") from None
    return stored


def open_stored(
    repo: Repository, blob_id: bytes, entry: BlobEntry, stored: bytes | memoryview, check_id: bool = True
) -> bytes:
    """The content of a blob from its stored bytes, verified (see the module docstring)."""
    what = f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}"
    if len(stored) != entry.length:
        raise IntegrityError(f"{what}: pack truncated")
    data = open_blob(repo.keys, stored, blob_id, entry.raw_length, what)
    if len(data) != entry.raw_length or (check_id and repo.keys.chunk_id(data) != blob_id):
        raise IntegrityError(f"{what}: content does not match its id (corrupt)")
    return data


def check_blob(repo: Repository, blob_id: bytes, entry: BlobEntry, data: bytes) -> None:
    """The id check that :func:`read_blob_run` skipped with ``check_ids=False``: raises the
    error :func:`read_blob` would have raised when ``data`` is not ``blob_id``'s content."""
    if repo.keys.chunk_id(data) != blob_id:
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]} in pack {entry.pack[:16]}: content does not match its id (corrupt)"
        )


def read_blob_run(
    repo: Repository, run: Sequence[tuple[bytes, BlobEntry]], check_ids: bool = True
) -> list[bytes]:
    """:func:`read_blob` for blobs of one pack stored close together (in any order: see
    :func:`plan_runs`), with one read of the range that covers them all; in the order given.

    ``check_ids=False`` leaves out the check of each blob's content against its id (length,
    envelope and, when encrypted, authentication are still checked): for a caller that
    proves the content another way (a one-chunk file's whole-file SHA-256) and calls
    :func:`check_blob` to name the blob when that proof fails."""
    if len(run) == 1 and check_ids:
        return [read_blob(repo, *run[0])]
    if any(entry.pack != run[0][1].pack for _, entry in run):
        raise ValueError("a run of blobs must come from one pack")
    low_id, low = min(run, key=lambda item: item[1].offset)
    end = max(entry.offset + entry.length for _, entry in run)
    span = memoryview(get_range(repo, low_id, low, end - low.offset))
    return [
        open_stored(
            repo,
            blob_id,
            entry,
            span[entry.offset - low.offset : entry.offset - low.offset + entry.length],
            check_ids,
        )
        for blob_id, entry in run
    ]


def plan_runs(chunks: Iterable[str], located: dict[bytes, BlobEntry]) -> list[Run]:
    """A file's chunks (hex ids) in order, grouped into runs that one request reads: consecutive
    chunks of one pack whose covering range is at most :data:`RUN_BYTES` and mostly theirs (packs
    hold a file's chunks nearly in order; parallel compression swaps neighbours), and whose
    contents add up to at most :data:`RUN_BYTES` (memory stays bounded: a run of one repeated
    all-zero chunk is tiny in the pack).  ``located``: the chunks' index entries
    (:meth:`~coldkeep.repository.index.IndexCache.get_many`); one it lacks is an
    :class:`IntegrityError` naming the blob."""
    runs: list[Run] = []
    run: Run = []
    lo = hi = used = raw = 0
    for hex_id in chunks:
        blob_id = bytes.fromhex(hex_id)
        loc = located.get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
        end = loc.offset + loc.length
        if run:
            new_lo, new_hi = min(lo, loc.offset), max(hi, end)
            span = new_hi - new_lo
            if (
                loc.pack == run[0][1].pack
                and span <= RUN_BYTES
                and raw + loc.raw_length <= RUN_BYTES
                and 4 * (used + loc.length) >= 3 * span
            ):
                run.append((blob_id, loc))
                lo, hi, used, raw = new_lo, new_hi, used + loc.length, raw + loc.raw_length
                continue
            runs.append(run)
        run, lo, hi, used, raw = [(blob_id, loc)], loc.offset, end, loc.length, loc.raw_length
    if run:
        runs.append(run)
    return runs
