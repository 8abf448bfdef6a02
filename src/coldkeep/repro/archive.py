"""Deterministic ``.tar.gz`` of a directory on disk, and the ``sha256sum`` list of a directory.

Used for the model exports and for the package itself: entries sorted by name, directories
before their contents, owners 0/0 without names, modes 0644/0755, symlinks kept as symlinks,
mtimes either every file's own or one fixed time, and the gzip of
:class:`~coldkeep.datasets.export.ParallelGzip` (every core, mtime 0, the same bytes on any
number of threads).  The archive is written under a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from coldkeep.datasets.export import COPY_BUFFER, HashingFile, ParallelGzip
from coldkeep.datasets.manifest import checksum_line
from coldkeep.durable import AtomicOutput

LEVEL = 6


def walk_sorted(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below ``root``, depth first, names sorted by bytes."""
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = root / rel if rel else root
        names = sorted(os.listdir(directory), key=os.fsencode)
        subdirs = []
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(root / child)
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(COPY_BUFFER):
            sha.update(piece)
    return sha.hexdigest()


def checksums(root: Path, *, skip: str = "") -> tuple[bytes, dict[str, tuple[str, int]]]:
    """The ``sha256sum`` list of every regular file below ``root`` but ``skip`` (sorted by path
    bytes), and ``path -> (sha256, size)``."""
    found: dict[str, tuple[str, int]] = {}
    for rel, st in walk_sorted(root):
        if stat.S_ISREG(st.st_mode) and rel != skip:
            found[rel] = (sha256_file(root / rel), st.st_size)
    lines = b"".join(checksum_line(found[p][0], p) for p in sorted(found, key=os.fsencode))
    return lines, found


def _info(name: str, st: os.stat_result, mtime: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(st.st_mtime) if mtime is None else mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.mode = tarfile.SYMTYPE, 0o777
    else:
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info


def tar_directory(
    src: Path, dest: Path, top: str, *, mtime: int | None = None, threads: int | None = None
) -> str:
    """Write ``src`` as ``dest`` (a ``.tar.gz`` whose one top directory is ``top``); returns the
    archive's SHA-256.  Special files (fifos, sockets, devices) are left out."""
    workers = threads or max(2, os.cpu_count() or 2)
    with AtomicOutput(dest, buffering=COPY_BUFFER) as f:
        out = HashingFile(f)
        stream = ParallelGzip(out, LEVEL, workers)
        try:
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8",  # type: ignore[call-overload]
                              errors="surrogateescape", copybufsize=COPY_BUFFER) as tar:  # fmt: skip
                tar.addfile(_info(top, os.lstat(src), mtime))
                for rel, st in walk_sorted(src):
                    info = _info(f"{top}/{rel}", st, mtime)
                    if stat.S_ISLNK(st.st_mode):
                        info.linkname = os.readlink(src / rel)
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        with (src / rel).open("rb") as member:
                            tar.addfile(info, member)
                    elif stat.S_ISDIR(st.st_mode):
                        tar.addfile(info)
            stream.close()
        except BaseException:
            stream.abort()
            raise
    return out.sha.hexdigest()


def safe_extract(archive: Path, dest: Path) -> int:
    """Unpack ``archive`` (``.tar.gz``/``.tar.zst``/``.tar``) into ``dest``: regular files,
    directories and symlinks only; a member with an absolute name, a ``..`` part, or a path
    through a symlink of the archive is refused (:class:`ValueError`), so nothing is written
    outside ``dest``.  Returns how many files were written."""
    links: set[str] = set()
    files = 0
    with _open_tar(archive) as tar:
        for member in tar:
            name = member.name.rstrip("/")
            parts = name.split("/")
            if name.startswith("/") or ".." in parts or not name:
                raise ValueError(f"{archive.name}: member {member.name!r} would land outside {dest}")
            if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                raise ValueError(f"{archive.name}: member {member.name!r} goes through a symlink")
            target = dest / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.issym():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(member.linkname, target)
                links.add(name)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                fd = os.open(
                    target,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    member.mode & 0o755 | 0o600,
                )
                with open(fd, "wb") as out:
                    while piece := source.read(COPY_BUFFER):
                        out.write(piece)
                os.utime(target, (member.mtime, member.mtime))
                files += 1
    return files


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """``archive`` as a tar stream (``.zst`` through zstandard, anything else through tarfile's
    own decompression)."""
    with archive.open("rb") as raw:
        if archive.name.endswith(".zst"):
            import zstandard

            with (
                zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as stream,
                tarfile.open(fileobj=stream, mode="r|") as tar,
            ):
                yield tar
        else:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar
