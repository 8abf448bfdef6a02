"""A streaming tar reader for ``pg_basebackup -Ft -D -``, built for throughput.

``tarfile``'s stream mode reads a pipe in 10 KiB records and re-joins and slices its buffer for
every read: on a 2 GB base backup it cost ~63 % of ``pg backup``'s main thread.  This reader
does one large ``readinto`` per refill of a reusable buffer, and hands member data to the caller
with :meth:`TarReader.readinto`, which fills the caller's buffer (a chunk-sized ``bytearray``)
straight from the pipe once the few bytes already buffered are used up: member data is copied
once, kernel to chunk.

Formats: POSIX ustar (``prefix`` + ``name``), GNU (``ustar  \\0`` magic, ``L``/``K`` long
name/link records, base-256 numbers) and pax (``x`` per-member and ``g`` global extended headers:
``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime``).  PostgreSQL itself writes ustar
with 100-byte names and base-256 sizes over 8 GiB; the rest is handled so that any ``tar``
producer reads correctly.

Errors are :class:`TarTruncated` (the stream ended inside a header or member, or without the
end-of-archive marker) and :class:`TarFormatError` (a header checksum mismatch, a malformed
number or pax record).  Both are integrity errors: a backup that hits one is not recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from coldkeep.errors import IntegrityError

BLOCK: Final = 512
#: refill size of the internal buffer (and the pipe size asked for)
BUFFER_SIZE: Final = 1024 * 1024
#: reads at least this large go straight into the caller's buffer
DIRECT_READ: Final = 64 * 1024

_TYPES: Final = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink"}


class TarTruncated(IntegrityError):
    """The tar stream ended early."""

    hint = (
        "the producer (pg_basebackup) died or its output was cut; nothing was recorded, run the backup again"
    )


class TarFormatError(IntegrityError):
    """A tar header is damaged or not understood."""

    hint = "the tar stream is corrupt; nothing was recorded, run the backup again"


class _RawReader(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass
class TarMember:
    name: str
    type: str  # file | dir | symlink | hardlink | other
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: str = ""
    typeflag: bytes = b"0"

    def isfile(self) -> bool:
        return self.type == "file"

    def isdir(self) -> bool:
        return self.type == "dir"

    def issym(self) -> bool:
        return self.type == "symlink"


def _number(field: bytes, what: str) -> int:
    """An octal (NUL/space terminated) or GNU base-256 numeric header field."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big", signed=False)
        value &= (1 << (8 * len(field) - 1)) - 1  # drop the marker bit
        if field[0] & 0x40:  # negative (base-256 two's complement)
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"tar header: {what} field {field!r} is not a number") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def set_pipe_size(fd: int, size: int = BUFFER_SIZE) -> None:
    """Ask for a bigger pipe (fewer, larger reads; the producer runs further ahead); best effort."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)  # type: ignore[attr-defined,unused-ignore]


class TarReader:
    """Iterate over the members of a tar stream; read each file's data with :meth:`readinto`.

    ``for member in reader:`` yields :class:`TarMember` objects; data the caller did not read
    (and the padding to 512 bytes) is skipped before the next member.  Iteration ends at the
    end-of-archive marker (a zero block); a stream that ends before it raises :class:`TarTruncated`.
    """

    def __init__(self, raw: _RawReader, *, buffer_size: int = BUFFER_SIZE) -> None:
        self._raw = raw
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self._eof = False
        self._member: TarMember | None = None
        self._remaining = 0  # data bytes of the current member not yet consumed
        self._padding = 0
        self._global: dict[str, str] = {}
        #: bytes consumed from the stream so far
        self.offset = 0

    # -- low level --------------------------------------------------------------------------------

    def _raw_readinto(self, mv: memoryview) -> int:
        while True:
            try:
                n = self._raw.readinto(mv)
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            return n or 0

    def _fill(self, need: int) -> bool:
        """Make at least ``need`` bytes available in the buffer; False at end of stream."""
        if self._end - self._pos >= need:
            return True
        if self._pos:
            rest = self._end - self._pos
            self._view[:rest] = self._view[self._pos : self._end]
            self._pos, self._end = 0, rest
        while self._end < need and not self._eof:
            n = self._raw_readinto(self._view[self._end :])
            if n == 0:
                self._eof = True
            self._end += n
        return self._end - self._pos >= need

    def _take(self, n: int, what: str) -> memoryview:
        """``n`` (≤ buffer size) bytes from the buffer; valid until the next read."""
        if not self._fill(n):
            raise TarTruncated(
                f"tar stream ended early (in {what}, at byte {self.offset + self._end - self._pos})"
            )
        mv = self._view[self._pos : self._pos + n]
        self._pos += n
        self.offset += n
        return mv

    def _exact(self, mv: memoryview, what: str) -> None:
        """Fill ``mv`` completely from the stream (buffered bytes first, then straight from it)."""
        total = len(mv)
        got = min(total, self._end - self._pos)
        if got:
            mv[:got] = self._view[self._pos : self._pos + got]
            self._pos += got
        while got < total:
            want = total - got
            if want >= DIRECT_READ or self._eof:
                n = self._raw_readinto(mv[got:])
                if n == 0:
                    self._eof = True
                    self.offset += got
                    raise TarTruncated(f"tar stream ended early (in {what}, {total - got} bytes missing)")
                got += n
            else:
                if not self._fill(1):
                    continue  # at EOF: the direct branch raises
                n = min(want, self._end - self._pos)
                mv[got : got + n] = self._view[self._pos : self._pos + n]
                self._pos += n
                got += n
        self.offset += total

    def _skip(self, n: int, what: str) -> None:
        while n > 0:
            step = min(n, len(self._buf))
            self._take(step, what)
            n -= step

    # -- members ----------------------------------------------------------------------------------

    def _data(self, size: int, what: str) -> bytes:
        """A whole small member's data (long names, pax records) plus its padding."""
        data = bytearray(size)
        self._exact(memoryview(data), what)
        self._skip(-size % BLOCK, what)
        return bytes(data)

    def _finish_member(self) -> None:
        if self._member is not None:
            what = f"member {self._member.name}"
            self._skip(self._remaining, what)
            self._skip(self._padding, what)
            self._member, self._remaining, self._padding = None, 0, 0

    def __iter__(self) -> Iterator[TarMember]:
        while True:
            self._finish_member()
            member = self._next_header()
            if member is None:
                return
            self._member = member
            self._remaining = member.size
            self._padding = -member.size % BLOCK
            yield member

    def _next_header(self) -> TarMember | None:
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        while True:
            if not self._fill(BLOCK):
                if self._end == self._pos:
                    raise TarTruncated(
                        f"tar stream ended without an end-of-archive marker (at byte {self.offset})"
                    )
                raise TarTruncated(f"tar stream ended early (in a header, at byte {self.offset})")
            header = bytes(self._take(BLOCK, "a header"))
            if header == bytes(BLOCK):
                return None  # end of archive (a second zero block and trailing records are not read)
            stored = _number(header[148:156], "checksum")
            unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
            signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
            if stored not in (unsigned, signed):
                raise TarFormatError(f"tar header checksum mismatch at byte {self.offset - BLOCK}")
            typeflag = header[156:157]
            size = _number(header[124:136], "size")
            if typeflag in (b"L", b"K"):
                value = _text(self._data(size, "a GNU long name"))
                if typeflag == b"L":
                    long_name = value
                else:
                    long_link = value
                continue
            if typeflag in (b"x", b"g"):
                records = _pax(self._data(size, "a pax header"))
                if typeflag == b"g":
                    self._global.update(records)
                else:
                    pax.update(records)
                continue
            name = _text(header[0:100])
            magic = header[257:265]
            if magic[:6] == b"ustar\0":  # POSIX: prefix + "/" + name (GNU uses that field otherwise)
                prefix = _text(header[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            ext = {**self._global, **pax}
            member = TarMember(
                name=ext.get("path", long_name if long_name is not None else name),
                type=_TYPES.get(typeflag, "other"),
                mode=_number(header[100:108], "mode"),
                uid=int(ext["uid"]) if "uid" in ext else _number(header[108:116], "uid"),
                gid=int(ext["gid"]) if "gid" in ext else _number(header[116:124], "gid"),
                mtime=int(float(ext["mtime"])) if "mtime" in ext else _number(header[136:148], "mtime"),
                size=int(ext["size"]) if "size" in ext else size,
                linkname=ext.get("linkpath", long_link if long_link is not None else _text(header[157:257])),
                typeflag=typeflag,
            )
            if member.type in ("symlink", "hardlink"):
                member.size = 0  # POSIX: no data follows, whatever the size field says
            if member.size < 0:
                raise TarFormatError(f"tar header of {member.name}: negative size")
            return member

    # -- data of the current member ------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Data bytes of the current member not read yet."""
        return self._remaining

    def readinto(self, mv: memoryview) -> None:
        """Fill ``mv`` with the current member's next ``len(mv)`` bytes (at most :attr:`remaining`)."""
        if self._member is None or len(mv) > self._remaining:
            raise ValueError("read past the end of the tar member")
        self._exact(mv, f"member {self._member.name}")
        self._remaining -= len(mv)

    def read(self, n: int | None = None) -> bytes:
        """The current member's next ``n`` bytes (all that remain when ``n`` is None)."""
        n = self._remaining if n is None else min(n, self._remaining)
        out = bytearray(n)
        self.readinto(memoryview(out))
        return bytes(out)


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding after the last record
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise TarFormatError("pax header: malformed record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError("pax header: malformed record length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("pax header: malformed record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def open_fd(fd: int) -> _RawReader:
    """An unbuffered reader over ``fd`` (not closed by it)."""
    return os.fdopen(fd, "rb", buffering=0, closefd=False)
