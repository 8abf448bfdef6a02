"""Is a checkpoint complete? Real safetensors files (the ``safetensors`` library), broken ones,
framework markers, indexes, symlinks and the settle time."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tests.ckptfiles import tensors, write_checkpoint

from coldkeep.checkpoints.completeness import apply_commit_rule, assess
from coldkeep.checkpoints.tensors import check_layout, read_layout


def complete(path: Path, settle: float = 0) -> tuple[bool, str]:
    a = assess(str(path), now=time.time(), settle_seconds=settle)
    return a.complete, a.reason()


def _raw(path: Path, header: dict[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# --- safetensors structure -----------------------------------------------------------------------


def test_a_real_file_is_complete_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(tensors(1, 5), str(path), metadata={"format": "pt"})
    layout = read_layout(path)
    assert layout.complete and not layout.problems
    assert len(layout.tensors) == 5 and {t.dtype for t in layout.tensors} == {"F16"}


def test_a_3000_tensor_shard(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    rng = np.random.default_rng(3)
    save_file(
        {f"t.{i}": rng.standard_normal((i % 7 + 1, 3)).astype(np.float32) for i in range(3000)}, str(path)
    )
    layout = read_layout(path)
    assert layout.complete and not layout.problems and len(layout.tensors) == 3000


def test_a_shard_cut_short_or_grown_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(tensors(1, 5), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # a writer still at work
    assert not read_layout(path).complete
    assert "still being written" in read_layout(path).incomplete_reason
    path.write_bytes(data[:20])  # not even the whole header
    assert not read_layout(path).complete
    path.write_bytes(data + b"\0" * 64)  # appended to
    assert not read_layout(path).complete


def test_structural_problems_are_named(tmp_path: Path) -> None:
    f16 = lambda b, e, shape: {"dtype": "F16", "shape": shape, "data_offsets": [b, e]}  # noqa: E731
    header = {
        "a": f16(0, 8, [2, 2]),
        "b": f16(4, 12, [2, 2]),  # overlaps a
        "c": f16(12, 20, [3, 3]),  # 18 bytes by its shape, 8 by its offsets
        "d": {"dtype": "Q7", "shape": [1], "data_offsets": [20, 24]},
    }
    layout = read_layout(_raw(tmp_path / "x.safetensors", header, b"\0" * 24))
    assert layout.complete  # the data section is as long as the tensors say
    text = "\n".join(layout.problems)
    assert "'a' and 'b' overlap" in text
    assert "tensor 'c': F16 [3, 3] is 18 bytes but data_offsets give 8" in text
    assert "unknown dtype 'Q7'" in text
    gap = read_layout(_raw(tmp_path / "g.safetensors", {"a": f16(8, 16, [2, 2])}, b"\0" * 16))
    assert "8 bytes before tensor 'a' belong to no tensor" in gap.problems


def test_garbage_never_raises() -> None:
    for blob in (
        b"",
        b"\x05",
        struct.pack("<Q", 2**62) + b"{}",
        struct.pack("<Q", 3) + b"[1]",
        struct.pack("<Q", 2) + b"\xff\xfe",
    ):
        layout = check_layout(blob, len(blob))
        assert not layout.complete and layout.fatal


# --- the checkpoint directory --------------------------------------------------------------------


def test_a_written_checkpoint_is_complete(tmp_path: Path) -> None:
    assert complete(write_checkpoint(tmp_path / "c")) == (True, "")


def test_a_checkpoint_without_an_index_is_complete(tmp_path: Path) -> None:
    assert complete(write_checkpoint(tmp_path / "c", shards=1, index=False)) == (True, "")


def test_a_shard_named_by_the_index_missing(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "c", shards=3)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    ok, why = complete(ckpt)
    assert (
        not ok
        and "model.safetensors.index.json: names shards that do not exist: model-00002-of-00003.safetensors"
        in why
    )


def test_an_orbax_tmp_directory(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "c")
    (ckpt / "state.orbax-checkpoint-tmp-1699999999").mkdir()
    ok, why = complete(ckpt)
    assert not ok and "Orbax save in progress" in why


def test_torch_distributed_without_metadata(tmp_path: Path) -> None:
    ckpt = tmp_path / "c"
    (ckpt / "dcp").mkdir(parents=True)
    (ckpt / "dcp" / "__0_0.distcp").write_bytes(b"x" * 100)
    ok, why = complete(ckpt)
    assert not ok and "dcp: torch.distributed shards without .metadata" in why
    (ckpt / "dcp" / ".metadata").write_bytes(b"m")
    assert complete(ckpt) == (True, "")


def test_commit_success_is_required_where_the_phase_writes_it(tmp_path: Path) -> None:
    a, b = write_checkpoint(tmp_path / "a"), write_checkpoint(tmp_path / "b", seed=1)
    (a / "commit_success.txt").write_text("ok")
    found = [assess(str(p), now=time.time(), settle_seconds=0) for p in (a, b)]
    apply_commit_rule(found)
    assert found[0].complete and not found[1].complete and "commit_success.txt" in found[1].reason()
    alone = [assess(str(b), now=time.time(), settle_seconds=0)]
    apply_commit_rule(alone)
    assert alone[0].complete  # no checkpoint of the phase has one: the framework writes none


def test_symlinks_inside_are_fine_outside_are_not(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "c")
    os.symlink("config.json", ckpt / "config-link.json")
    assert complete(ckpt) == (True, "")
    (tmp_path / "shared.bin").write_bytes(b"shared")
    os.symlink("../shared.bin", ckpt / "shared.bin")
    ok, why = complete(ckpt)
    assert not ok and "shared.bin: symlink to '../shared.bin' outside the checkpoint" in why


def test_settle_time_and_empty(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "c")
    ok, why = complete(ckpt, settle=120)
    assert not ok and "settle_seconds 120" in why
    old = time.time() - 3600  # mtime back an hour: ctime still says now (a copy keeping mtimes)
    for p in ckpt.iterdir():
        os.utime(p, (old, old))
    assert not complete(ckpt, settle=120)[0]
    (tmp_path / "empty").mkdir()
    assert complete(tmp_path / "empty") == (False, "holds no file")
