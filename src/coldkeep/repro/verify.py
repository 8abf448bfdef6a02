"""``repro verify`` and ``repro restore``.

* :func:`verify_archive` — a ``NAME.tar.gz`` on disk: every member hashed as the archive streams
  by, compared with the ``checksums.sha256`` inside it (and the archive with its ``.sha256``
  beside it, when there is one);
* :func:`verify_recorded` — a recorded package: every stored byte re-read (``verify_snapshot``)
  and every file's SHA-256 compared with ``checksums.sha256``;
* :func:`restore_package` — a recorded package restored into a new or empty directory, every byte
  verified, then the dataset and model archives unpacked beside themselves
  (``dataset/<top>/``, ``models/<name>/``).

Every failing file is named: ``different`` (hash differs), ``missing`` (listed, absent),
``unlisted`` (present, not listed), ``damaged`` (stored bytes fail).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep.datasets.check import require_empty
from coldkeep.datasets.export import COPY_BUFFER
from coldkeep.errors import IntegrityError, RestoreTargetError, UsageError
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.restore import Restorer
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repro.archive import safe_extract
from coldkeep.repro.package import CHECKSUMS, NAME_TAG


def parse_checksums(data: bytes) -> dict[str, str]:
    """``path -> sha256`` of a ``sha256sum`` list (GNU escapes undone); a malformed line is an
    :class:`IntegrityError`."""
    out: dict[str, str] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line, escaped = (raw[1:], True) if raw.startswith(b"\\") else (raw, False)
        digest, sep, name = line.partition(b"  ")
        if not sep or len(digest) != 64:
            raise IntegrityError(f"{CHECKSUMS} line {number} is not a sha256sum line")
        if escaped:
            name = (
                name.replace(b"\\\\", b"\0")
                .replace(b"\\n", b"\n")
                .replace(b"\\r", b"\r")
                .replace(b"\0", b"\\")
            )
        out[os.fsdecode(name).removeprefix("./")] = digest.decode("ascii")
    return out


@dataclass
class PackageCheck:
    what: str
    files: int = 0
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, detail)

    @property
    def ok(self) -> bool:
        return not self.problems

    def failing(self) -> list[str]:
        return sorted({p for p, _, _ in self.problems})

    def to_json(self) -> dict[str, Any]:
        return {"package": self.what, "ok": self.ok, "files": self.files, "failing": self.failing(),
                "problems": [{"path": p, "kind": k, "detail": d} for p, k, d in self.problems]}  # fmt: skip


def _compare(check: PackageCheck, listed: dict[str, str], found: dict[str, str]) -> None:
    for path in sorted(listed.keys() | found.keys()):
        if path == CHECKSUMS:
            continue
        if path not in found:
            check.problems.append((path, "missing", "listed in checksums.sha256, not in the package"))
        elif path not in listed:
            check.problems.append((path, "unlisted", "in the package, not in checksums.sha256"))
        elif listed[path] != found[path]:
            check.problems.append(
                (path, "different", f"SHA-256 is {found[path]}, checksums.sha256 says {listed[path]}")
            )
    check.files = len(found)


def verify_archive(path: Path) -> PackageCheck:
    """Verify the package archive at ``path`` (see the module docstring)."""
    check = PackageCheck(str(path))
    sidecar = Path(str(path) + ".sha256")
    whole = hashlib.sha256()
    found: dict[str, str] = {}
    listed: dict[str, str] | None = None
    try:
        with path.open("rb") as raw:
            reader = _Tee(raw, whole)
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.partition("/")[2]
                    source = tar.extractfile(member)
                    assert source is not None
                    sha = hashlib.sha256()
                    kept: list[bytes] = []
                    while piece := source.read(COPY_BUFFER):
                        sha.update(piece)
                        if name == CHECKSUMS:
                            kept.append(piece)
                    if name == CHECKSUMS:
                        listed = parse_checksums(b"".join(kept))
                    found[name] = sha.hexdigest()
            while reader.read(COPY_BUFFER):
                pass
    except (tarfile.TarError, EOFError, OSError) as exc:
        check.problems.append((path.name, "damaged", f"not a readable tar archive ({exc})"))
        return check
    if listed is None:
        check.problems.append((CHECKSUMS, "missing", "the package has no checksums.sha256"))
        return check
    _compare(check, listed, found)
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8", errors="replace").split()[:1]
        if expected != [whole.hexdigest()]:
            check.problems.append(
                (
                    path.name,
                    "different",
                    f"SHA-256 is {whole.hexdigest()}, {sidecar.name} says {expected[0] if expected else 'nothing'}",
                )
            )
    return check


class _Tee:
    """A file read through, every byte hashed."""

    def __init__(self, raw: Any, sha: Any) -> None:
        self.raw, self.sha = raw, sha

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.sha.update(data)
        return data


def verify_recorded(repo: Repository, snap: Snapshot) -> PackageCheck:
    """Verify the recorded package ``snap`` (see the module docstring)."""
    check = PackageCheck(snap.tags.get(NAME_TAG, snap.id))
    with locked(repo.backend, "repro verify", exclusive=False):
        result = repo.verify_snapshot(snap)
        check.problems.extend((p.path, p.kind, p.detail) for p in result.problems)
        entries = [e for e in repo.iter_tree(snap) if e.get("type") == "file"]
        by_path = {e["path"]: e for e in entries}
        if CHECKSUMS not in by_path:
            check.problems.append((CHECKSUMS, "missing", "the package has no checksums.sha256"))
            return check
        try:
            with repo.open_entry(snap, by_path[CHECKSUMS]) as reader:
                listed = parse_checksums(reader.read())
        except IntegrityError as exc:
            check.problems.append((CHECKSUMS, "damaged", exc.message))
            return check
        _compare(check, listed, {p: str(e.get("sha256")) for p, e in by_path.items()})
    return check


def restore_package(repo: Repository, snap: Snapshot, target: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore ``snap`` into ``target`` (new or empty), then unpack its dataset and models."""
    path = Path(os.path.abspath(target))
    require_empty(str(path))
    result = Restorer(repo).run(snap, path)
    failed = result.damage + [e for e in result.errors if e not in result.damage]
    if failed:
        message = f"package {snap.tags.get(NAME_TAG)} not restored whole into {path}: {failed[0]}"
        if result.damage:
            raise IntegrityError(message)
        raise RestoreTargetError(message, target=str(path))
    unpacked: dict[str, str] = {}
    for archive in sorted([*(path / "dataset").glob("*.tar.*"), *(path / "models").glob("*.tar.gz")]):
        if archive.name.endswith(".sha256"):
            continue
        try:
            safe_extract(archive, archive.parent)
        except (ValueError, tarfile.TarError, OSError) as exc:
            raise UsageError(f"cannot unpack {archive.relative_to(path)}: {exc}") from None
        unpacked[str(archive.relative_to(path))] = str(archive.parent)
    return {"package": snap.tags.get(NAME_TAG), "target": str(path), "files": result.files, "bytes": result.bytes,
            "unpacked": unpacked}  # fmt: skip
