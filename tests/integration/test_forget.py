"""`coldkeep forget` removes generic file snapshots only (issue 11 item 2).

PostgreSQL base backups (owned by `pg expire`) and Tier-1 dataset snapshots are never removed by a
generic command: not by a policy (the README's `forget --keep-daily 30 --keep-monthly 12`, or
`--keep-last 1`), and naming one by id is refused with exit 2 and the owning command in the hint.
A policy applies per host and set of paths unless `--group-by` says otherwise.  Real `pg backup`
on a throwaway cluster archiving into the repository, real file backups next to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Site, make_tree, one_line_error
from tests.pgsite import Env, archiving_env

from coldkeep.errors import EXIT_NOT_FOUND, EXIT_USAGE
from coldkeep.postgres.cluster import TempCluster


@pytest.fixture
def pgenv(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Env]:
    yield from archiving_env(pg_cluster, pg_coldkeep)


def snapshots(env: Env) -> list[dict[str, Any]]:
    return list(env.ckj("snapshots"))


def ids_of(rows: list[dict[str, Any]], **where: str) -> list[str]:
    return [r["id"] for r in rows if all(r.get(k) == v or r["tags"].get(k) == v for k, v in where.items())]


def file_backup(env: Env, path: Path, *tags: str) -> str:
    args = [a for tag in tags for a in ("--tag", tag)]
    return str(env.ckj("backup", str(path), *args)["snapshot_id"])


def tree(root: Path, seed: int) -> Path:
    return make_tree(root, seed=seed, small_files=6, big_sizes=(200_000,))


def test_keep_last_1_after_a_base_backup_and_two_file_snapshots_keeps_the_base_backup(pgenv: Env) -> None:
    env = pgenv
    env.cluster.sql("INSERT INTO marks (label) SELECT 'row ' || g FROM generate_series(1, 200) g")
    base_backup = env.ckj("pg", "backup")["id"]
    data = tree(env.base / "files", 1)
    first = file_backup(env, data)
    (data / "added.txt").write_text("more\n")
    second = file_backup(env, data)

    result = env.ckj("forget", "--keep-last", "1")
    assert [b["id"] for b in env.ckj("pg", "backups")] == [base_backup]
    assert sorted(r["id"] for r in snapshots(env)) == sorted([base_backup, second])
    assert result["removed"] == [first]
    assert [a["id"] for a in result["left_alone"]] == [base_backup]
    assert "coldkeep pg expire" in result["left_alone"][0]["reason"]
    env.ck("repo", "prune")
    env.ck("pg", "verify", base_backup)  # the base backup's data survived the prune too


def test_the_readme_forget_on_the_demo_repository_removes_no_base_backup_and_no_dataset(
    pgenv: Env,
) -> None:
    """The demo: three dataset snapshots (`--tag kind=dataset`), `forget --keep-last 2`, two base
    backups (the first labelled nightly), then the README's `forget --keep-daily 30 --keep-monthly 12`
    — which removed 3 of the 4 snapshots before."""
    env = pgenv
    data = tree(env.base / "datasets" / "applications", 2)
    datasets = [file_backup(env, data, "kind=dataset")]
    (data / "v2.txt").write_text("v2\n")
    datasets.append(file_backup(env, data, "kind=dataset"))
    (data / "v3.txt").write_text("v3\n")
    datasets.append(file_backup(env, data, "kind=dataset"))
    env.ck("forget", "--keep-last", "2")
    assert sorted(r["id"] for r in snapshots(env)) == sorted(datasets)  # Tier-1: never by `forget`
    backups = [env.ckj("pg", "backup", "--label", "nightly")["id"], env.ckj("pg", "backup")["id"]]

    env.ck("forget", "--keep-daily", "30", "--keep-monthly", "12")
    assert sorted(r["id"] for r in snapshots(env)) == sorted(datasets + backups)
    dry = env.ckj("forget", "--keep-daily", "30", "--keep-monthly", "12", "--dry-run")
    assert dry["removed"] == [] and dry["decisions"] == []
    assert {a["id"] for a in dry["left_alone"]} == set(datasets + backups)
    human = env.ck("forget", "--keep-daily", "30", "--keep-monthly", "12").stdout
    assert "left alone: 5 snapshot(s)" in human and "removed only by `coldkeep pg expire`" in human
    assert "dataset snapshot: Tier-1 data, kept permanently" in human


def test_forget_by_id_removes_named_generic_snapshots_and_refuses_service_ones(pgenv: Env) -> None:
    env = pgenv
    data = tree(env.base / "files", 3)
    generic = [file_backup(env, data)]
    (data / "x").write_text("x\n")
    generic.append(file_backup(env, data))
    (data / "y").write_text("y\n")
    generic.append(file_backup(env, data))
    dataset = file_backup(env, tree(env.base / "ds", 4), "kind=dataset")
    base_backup = env.ckj("pg", "backup")["id"]

    # a base backup named among generic ones: refused (exit 2), nothing at all removed
    proc = env.ck("forget", generic[0], base_backup[:10], expect=EXIT_USAGE)
    line = one_line_error(proc)
    assert base_backup[:8] in line and "PostgreSQL base backup" in line and "nothing was removed" in line
    assert "hint: its retention is `coldkeep pg expire`" in proc.stderr
    proc = env.ck("forget", dataset, expect=EXIT_USAGE)
    assert "dataset snapshot" in one_line_error(proc) and "Tier-1" in proc.stderr
    assert len(snapshots(env)) == 5

    # ids and unique prefixes; a repeated name counts once; --dry-run removes nothing
    assert env.ckj("forget", "--dry-run", generic[0][:8])["removed"] == [generic[0]]
    assert len(snapshots(env)) == 5
    done = env.ckj("forget", generic[0][:8], generic[2], generic[2][:12])
    assert sorted(done["removed"]) == sorted([generic[0], generic[2]])
    assert all(d["reasons"] == ["named on the command line"] for d in done["decisions"])
    assert sorted(r["id"] for r in snapshots(env)) == sorted([generic[1], dataset, base_backup])

    one_line_error(env.ck("forget", "0123abcd", expect=EXIT_NOT_FOUND))
    one_line_error(env.ck("forget", generic[1], "--keep-last", "1", expect=EXIT_USAGE))
    one_line_error(env.ck("forget", "latest", expect=EXIT_USAGE))
    assert sorted(r["id"] for r in snapshots(env)) == sorted([generic[1], dataset, base_backup])


def test_a_policy_applies_per_host_and_paths_by_default(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    a, b = tree(tmp_path / "a", 5), tree(tmp_path / "b", 6)
    snaps: dict[str, list[str]] = {"a": [], "b": [], "ab": []}
    for n in range(2):
        (a / f"n{n}").write_text(str(n))
        snaps["a"].append(site.json("backup", str(a))["snapshot_id"])
        snaps["ab"].append(site.json("backup", str(b), str(a))["snapshot_id"])
    snaps["b"].append(site.json("backup", str(b))["snapshot_id"])
    owned = site.json("backup", str(b), "--tag", "service=postgres")["snapshot_id"]

    dry = site.json("forget", "--keep-last", "1", "--dry-run")
    kept = {d["id"] for d in dry["decisions"] if d["keep"]}
    assert kept == {snaps["a"][1], snaps["ab"][1], snaps["b"][0]}  # the newest of each path set
    groups = {d["id"]: d["group"] for d in dry["decisions"]}
    assert groups[snaps["ab"][0]]["paths"] == f'["{a}", "{b}"]' and "host" in groups[snaps["ab"][0]]
    assert [x["id"] for x in dry["left_alone"]] == [owned]  # tagged as a service's: left alone

    one_group = site.json("forget", "--keep-last", "1", "--group-by", "", "--dry-run")
    assert {d["id"] for d in one_group["decisions"] if d["keep"]} == {snaps["b"][0]}

    site.json("forget", "--keep-last", "1")
    left = {s["id"] for s in site.json("snapshots")}
    assert left == {snaps["a"][1], snaps["ab"][1], snaps["b"][0], owned}
    site.ok("repo", "prune")
    site.ok("repo", "check", "--read-data")
