"""``checkpoints export NAME [--format tar.gz|tar.zst] [--to DIR]``: a standalone archive of a
stored checkpoint for the reproducibility package, streamed from the repository (never restored
to disk first), and a ``.sha256`` beside it that ``sha256sum -c`` accepts.

The archive is ``<DIR>/cet-d-{phase}_{type}-{stamp}.tar.zst`` (or ``.tar.gz``); its members are
``cet-d-{phase}/{type}-{stamp}/…``, so ``tar -xf`` in the models root puts the checkpoint back at
its hot path.  Every file's bytes are verified as they are read (``open_entries``: a file that
does not verify stops the export before its end is written), the archive is written under a
temporary name, fsynced and renamed; the checksum file is written the same way, last.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import zstandard

from coldkeep.checkpoints.recover import resolve
from coldkeep.durable import AtomicOutput, write_atomic
from coldkeep.errors import UsageError

if TYPE_CHECKING:
    from coldkeep.checkpoints.service import Service
    from coldkeep.repository.tree import TreeEntry

FORMATS = ("tar.zst", "tar.gz")


class _Hashing:
    """A write-only file that hashes what goes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _info(entry: TreeEntry, prefix: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"{prefix}/{entry['path']}")
    info.mode = int(entry.get("mode", 0o644))
    info.uid, info.gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
    info.mtime = int(entry.get("mtime_ns", 0)) // 1_000_000_000
    kind = entry.get("type")
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, str(entry.get("target", ""))
    else:
        info.size = int(entry.get("size", 0))
    return info


@dataclass
class Exported:
    name: str
    snapshot: str
    archive: str
    checksum_file: str
    sha256: str
    bytes: int
    files: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def export(svc: Service, ref: str, *, fmt: str = "tar.zst", to: str = ".") -> Exported:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="one of " + ", ".join(FORMATS))
    name, snap = resolve(svc, ref)
    directory = os.path.abspath(to)
    os.makedirs(directory, exist_ok=True)
    base = f"{name.phase_dir}_{name.dirname}.{fmt}"
    dest = os.path.join(directory, base)
    files = 0
    entries = list(svc.repo.iter_tree(snap))
    prefix = name.name
    with AtomicOutput(dest) as raw:
        hashing = _Hashing(raw)
        if fmt == "tar.zst":
            compressor = zstandard.ZstdCompressor(level=3, write_checksum=True, threads=-1)
            stream: Any = compressor.stream_writer(hashing, closefd=False)  # type: ignore[arg-type]
        else:
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=6, mtime=0)
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            top = tarfile.TarInfo(prefix)
            found = snap.meta.get("dir")
            dir_meta: dict[str, Any] = found if isinstance(found, dict) else {}
            top.type, top.mode = tarfile.DIRTYPE, int(dir_meta.get("mode", 0o755))
            top.uid, top.gid = int(dir_meta.get("uid", 0)), int(dir_meta.get("gid", 0))
            tar.addfile(top)
            for entry in entries:
                if entry.get("type") in ("dir", "symlink"):
                    tar.addfile(_info(entry, prefix))
            for entry, reader in svc.repo.open_entries(snap, [e for e in entries if e.get("type") == "file"]):
                tar.addfile(_info(entry, prefix), reader)
                files += 1
        stream.close()
    digest = hashing.sha.hexdigest()
    checksum = dest + ".sha256"
    write_atomic(checksum, f"{digest}  {base}\n".encode())
    return Exported(name.name, snap.id, dest, checksum, digest, hashing.bytes, files)
