"""The structure of a safetensors file, checked from its header alone (no tensor is read).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (``{"name":
{"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the data
section.  :func:`check_layout` is pure: given the header bytes and the file size it returns the
tensors and every structural problem, the rules of the reference implementation's loader:

* the header is a JSON object of at most 100 MB, each entry has a known ``dtype``, a ``shape``
  of non-negative integers and two integer ``data_offsets``;
* ``dtype`` × ``shape`` is exactly ``end - begin`` bytes;
* sorted by offset, the tensors start at 0, do not overlap and leave no gap, and the last one
  ends exactly where the file ends.

*Complete* (:attr:`Layout.complete`) asks only what a save in progress would break: the header
parses and the data section is exactly as long as the tensors say (a shard still being written is
shorter).  ``verify`` reports every problem.  (The chunker's own reading of the layout,
``repository.chunker.safetensors_ranges``, is deliberately lenient — it only decides chunk
boundaries and never refuses a file — so it is not reused here.)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

#: headers larger than this are refused (the reference implementation's limit)
MAX_HEADER = 100_000_000
#: bits per element of every dtype the safetensors format defines
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Layout:
    """What the header says, and what is wrong with it."""

    size: int
    data_start: int = 0
    tensors: list[Tensor] = field(default_factory=list)
    #: the header could not be read at all (then ``tensors`` is empty)
    fatal: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The header parses and the data section ends where the last tensor ends."""
        return not self.fatal and self.tensors_end == self.size - self.data_start

    @property
    def tensors_end(self) -> int:
        return max((t.end for t in self.tensors), default=0)

    @property
    def incomplete_reason(self) -> str:
        if self.fatal:
            return self.fatal
        data_len = self.size - self.data_start
        if self.tensors_end != data_len:
            return f"data section is {data_len} bytes but the tensors end at {self.tensors_end} (still being written?)"
        return ""


def header_length(head: bytes) -> int | None:
    """N from the first 8 bytes (``None``: fewer than 8)."""
    return struct.unpack_from("<Q", head, 0)[0] if len(head) >= 8 else None


def check_layout(header: bytes, size: int) -> Layout:
    """The layout of a safetensors file of ``size`` bytes whose first bytes are ``header``
    (the 8-byte length and at least the N bytes of JSON).  Never raises on bad input."""
    layout = Layout(size=size)
    n = header_length(header)
    if n is None or size < 8:
        layout.fatal = f"{size} bytes is too short for a safetensors header"
        return layout
    if n > MAX_HEADER:
        layout.fatal = f"header length {n} exceeds the {MAX_HEADER}-byte limit"
        return layout
    if 8 + n > size:
        layout.fatal = f"header length {n} runs past the end of the file ({size} bytes; still being written?)"
        return layout
    if len(header) < 8 + n:
        layout.fatal = "the header could not be read whole"
        return layout
    layout.data_start = 8 + n
    try:
        doc = json.loads(header[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        layout.fatal = f"header is not valid UTF-8 JSON ({str(exc)[:80]})"
        return layout
    if not isinstance(doc, dict):
        layout.fatal = "header is not a JSON object"
        return layout
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        tensor = _tensor(name, info, layout.problems)
        if tensor is not None:
            layout.tensors.append(tensor)
    _check_placement(layout)
    return layout


def _tensor(name: str, info: object, problems: list[str]) -> Tensor | None:
    if not isinstance(info, dict):
        problems.append(f"tensor {name!r}: entry is not an object")
        return None
    offsets, dtype, shape = info.get("data_offsets"), info.get("dtype"), info.get("shape")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int and x >= 0 for x in offsets)
    ):
        problems.append(f"tensor {name!r}: no valid data_offsets")
        return None
    if not (isinstance(shape, list) and all(type(x) is int and x >= 0 for x in shape)):
        problems.append(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        return None
    begin, end = offsets
    tensor = Tensor(name, str(dtype), tuple(shape), begin, end)
    if end < begin:
        problems.append(f"tensor {name!r}: data_offsets [{begin}, {end}] run backwards")
        return tensor
    bits = DTYPE_BITS.get(str(dtype))
    if bits is None:
        problems.append(f"tensor {name!r}: unknown dtype {dtype!r}")
        return tensor
    nbits = math.prod(shape) * bits
    if nbits % 8 or nbits // 8 != end - begin:
        problems.append(
            f"tensor {name!r}: {dtype} {list(shape)} is {nbits / 8:g} bytes but data_offsets give {end - begin}"
        )
    return tensor


def _check_placement(layout: Layout) -> None:
    data_len = layout.size - layout.data_start
    pos = 0
    previous = ""
    for t in sorted(layout.tensors, key=lambda t: (t.begin, t.end)):
        if t.end > data_len:
            layout.problems.append(
                f"tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] run past the {data_len}-byte data section"
            )
        if t.begin < pos:
            layout.problems.append(f"tensors {previous!r} and {t.name!r} overlap")
        elif t.begin > pos:
            layout.problems.append(f"{t.begin - pos} bytes before tensor {t.name!r} belong to no tensor")
        pos, previous = max(pos, t.end), t.name
    if pos < data_len:
        layout.problems.append(f"{data_len - pos} bytes after the last tensor belong to no tensor")


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """:func:`check_layout` of the file at ``path`` (reads only its header; ``OSError`` when it
    cannot be opened)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = header_length(head)
        if n is not None and 8 + n <= min(size, 8 + MAX_HEADER):
            head += f.read(n)
    return check_layout(head, size)
