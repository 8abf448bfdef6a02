"""The service metrics (coldkeep.ops.metrics): checkpoints by type and place, counted from
directory listings and the snapshot catalog, agree with `checkpoints list` (which scans in full)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tests.ckptfiles import checkpoint_site, models, write_checkpoint

NOW = {"COLDKEEP_NOW": "2025-11-01T12:00:00Z"}


def test_checkpoint_counts_by_type_and_place(tmp_path: Path) -> None:
    site = checkpoint_site(tmp_path / "s")
    root = models(site)
    write_checkpoint(root / "cet-d-phase1" / "checkpoint-20251001_153000", seed=1, shards=1)  # due: archived
    write_checkpoint(root / "cet-d-phase1" / "checkpoint-20251030_000000", seed=2, shards=1)  # newest: stays
    write_checkpoint(root / "cet-d-phase1" / "best-20250701_000000", seed=3, shards=1)
    write_checkpoint(root / "cet-d-phase4" / "production-20240101_000000", seed=4, shards=1)
    (root / "cet-d-phase1" / "notes.txt").write_text("not a checkpoint")
    site.ok("checkpoints", "archive", env=NOW)
    site.ok("checkpoints", "backup", env=NOW)  # the rest, still hot: both places
    write_checkpoint(root / "cet-d-phase4" / "checkpoint-20251031_000000", seed=5, shards=1)  # hot only

    rows = site.json("checkpoints", "list", env=NOW)["checkpoints"]
    expected = Counter((r["type"], r["where"]) for r in rows)
    assert {place for _, place in expected} == {"hot", "repository", "both"}  # every place is exercised
    got: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(site.ok("metrics", env=NOW).stdout):
        for s in family.samples:
            if s.name == "coldkeep_checkpoints":
                got[(s.labels["type"], s.labels["place"])] = s.value
    assert {k: v for k, v in got.items() if v} == expected
    assert got[("production", "hot")] == 0  # every place of a type present, zero included
