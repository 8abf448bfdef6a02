"""``checkpoints verify --deep``: read every tensor and report NaN and Inf by tensor name.

Tensors are read with the ``safetensors`` library (numpy), one at a time.  dtypes numpy has no
type for (``BF16``, the 8-bit floats) are read as raw integers from the file (``numpy.memmap``
at the offsets the header gives) and their NaN/Inf bit patterns counted.  The files read are the
hot copy when it verified identical to the stored one, otherwise each shard streamed from the
repository into a temporary file on the hot disk (``<root>/.coldkeep-verify-…``), deleted after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open

from coldkeep.checkpoints.naming import OWN_PREFIX
from coldkeep.checkpoints.tensors import Tensor, read_layout

if TYPE_CHECKING:
    from coldkeep.checkpoints.service import Service
    from coldkeep.repository.snapshot import Snapshot
    from coldkeep.repository.tree import TreeEntry

#: raw bit tests for dtypes numpy cannot represent: (unsigned view, NaN-or-Inf mask, mantissa mask)
_RAW = {
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F8_E5M2": (np.uint8, 0x7C, 0x03),
    "F8_E4M3": (np.uint8, 0x7F, None),  # the "fn" variant: S.1111.111 is NaN, there is no Inf
}
_FLOATS = {"F16", "F32", "F64"}


def _count_raw(values: np.ndarray, dtype: str) -> tuple[int, int]:
    _view, mask, mantissa = _RAW[dtype]
    if mantissa is None:
        return int(np.count_nonzero((values & mask) == mask)), 0
    special = (values & mask) == mask
    nan = int(np.count_nonzero(special & ((values & mantissa) != 0)))
    return nan, int(np.count_nonzero(special)) - nan


def check_file(path: str) -> tuple[int, list[str]]:
    """(tensors read, NaN/Inf findings) of one safetensors file."""
    layout = read_layout(path)
    if layout.fatal:
        return 0, [layout.fatal]
    by_name: dict[str, Tensor] = {t.name: t for t in layout.tensors}
    findings: list[str] = []
    read = 0
    with safe_open(path, framework="np") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = by_name[name]
            read += 1
            if tensor.dtype in _FLOATS:
                values = f.get_tensor(name)
                nan, inf = int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))
            elif tensor.dtype in _RAW and tensor.end > tensor.begin:
                view = _RAW[tensor.dtype][0]
                raw = np.memmap(path, dtype=view, mode="r", offset=layout.data_start + tensor.begin,
                                shape=((tensor.end - tensor.begin) // np.dtype(view).itemsize,))  # fmt: skip
                nan, inf = _count_raw(np.asarray(raw), tensor.dtype)
                del raw
            else:
                continue  # integers and booleans hold no NaN
            if nan or inf:
                findings.append(f"tensor {name!r}: {nan} NaN, {inf} Inf")
    return read, findings


def deep_check(svc: Service, snap: Snapshot, entries: list[TreeEntry], hot: str | None) -> list[str]:
    """NaN/Inf findings of every safetensors file of ``snap`` (named ``path: tensor …``)."""
    problems: list[str] = []
    if hot is not None:
        for entry in entries:
            _read, findings = check_file(os.path.join(hot, entry["path"]))
            problems += [f"{entry['path']}: {f}" for f in findings]
        return problems
    os.makedirs(svc.root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=OWN_PREFIX + "verify-", dir=svc.root)
    try:
        for entry in entries:
            path = os.path.join(scratch, "shard.safetensors")
            with svc.repo.open_entry(snap, entry) as reader, open(path, "wb") as out:
                shutil.copyfileobj(reader, out, 4 * 1024 * 1024)
            _read, findings = check_file(path)
            problems += [f"{entry['path']}: {f}" for f in findings]
            os.unlink(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return problems
