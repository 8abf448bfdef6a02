"""`kill -9` of a real `coldkeep restore` (issue 11 item 1): a killed restore leaves no file under
a snapshot name with bytes the snapshot does not have, and no temporary file a later backup
could take for data under a predictable name; a rerun into the same target restores exactly.

A restore's storage calls are mostly ranged reads of packs (tiny packs here, so there are many):
``COLDKEEP_FAULTS=kill:get_range:N`` SIGKILLs it at its N-th one, for N spread over a counted run.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from tests.helpers import MiB, Site, make_tree, read_counts, spread, tree_digest

pytestmark = pytest.mark.slow

PACK_ENV = {"COLDKEEP_PACK_TARGET": "65536"}
POINTS = 10
#: the only names a restore may leave behind besides the snapshot's (where the filesystem or the
#: process cannot name unnamed ``O_TMPFILE`` files)
TEMP_NAME = re.compile(r"^\.coldkeep-restore-[0-9a-f]{32}\.tmp$")


def test_kill_restore(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", seed=21, big_sizes=(9 * MiB, 6 * MiB + 5, 5 * MiB + 7))
    (data / "b" / ".coldkeep-tmp-big-0.bin").write_bytes(b"x" * 31)  # the old, predictable temp name
    site = Site(tmp_path / "site", env=PACK_ENV)
    site.ok("repo", "init")
    site.ok("backup", str(data))
    (snap,) = site.snapshot_ids()
    want = tree_digest(data)
    counts = tmp_path / "counts.json"
    site.ok("restore", snap, "--target", str(tmp_path / "count"),
            env={"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts)})  # fmt: skip
    assert tree_digest(tmp_path / "count" / str(data).lstrip("/")) == want
    reads = read_counts(counts)["get_range"]
    assert reads >= POINTS, reads
    for n in spread(reads, POINTS):
        target = tmp_path / f"kill-{n}"
        proc = site.run(
            "restore", snap, "--target", str(target), env={"COLDKEEP_FAULTS": f"kill:get_range:{n}"}
        )
        assert proc.returncode == -signal.SIGKILL, f"read {n}: exit {proc.returncode}\n{proc.stderr}"
        restored = target / str(data).lstrip("/")
        got = tree_digest(restored) if restored.exists() else {}
        leftovers = sorted(rel for rel in got if rel not in want)
        assert all(TEMP_NAME.match(rel.rpartition("/")[2]) for rel in leftovers), f"read {n}: {leftovers}"
        for rel, fingerprint in got.items():
            if rel in want and fingerprint != want[rel] and fingerprint.startswith("file:"):
                # a small file is written under its final name once verified: killed while it is
                # written, it can be short there (as with tar and restic); never other bytes
                content, source = (restored / rel).read_bytes(), (data / rel).read_bytes()
                assert len(source) <= 4 * MiB and source.startswith(content), (
                    f"read {n}: {rel} has other bytes"
                )
        site.ok("restore", snap, "--target", str(target))
        again = tree_digest(restored)
        assert {rel: fp for rel, fp in again.items() if rel not in leftovers} == want, f"read {n}"
        assert {rel: again[rel] for rel in leftovers} == {rel: got[rel] for rel in leftovers}  # left alone
