"""Restore selection: patterns relative to the backed-up path, exclusions, where entries land."""

from __future__ import annotations

import pytest

from coldkeep.errors import UsageError
from coldkeep.repository.restore_plan import plan
from coldkeep.repository.restore_select import Selection
from coldkeep.repository.tree import TreeEntry

NAMES = ["mnt", "mnt/data", "mnt/data/train", "mnt/data/train/a.json", "mnt/data/holdout",
         "mnt/data/holdout/b.json", "mnt/data/trainer.py"]  # fmt: skip


def entries(names: list[str]) -> list[TreeEntry]:
    files = {n for n in names if "." in n.rsplit("/", 1)[-1]}
    return [TreeEntry(path=n, type="file" if n in files else "dir", mode=0o644) for n in names]  # type: ignore[typeddict-item]


def landed(selection: Selection, names: list[str] = NAMES) -> list[str]:
    return sorted(plan(entries(names), selection=selection).names())


def test_patterns_match_relative_to_the_backed_up_path_and_whole() -> None:
    rel = Selection(includes=["train/*"], roots=["/mnt/data"])
    # not trainer.py: 'train/*' needs the slash; the directories holding what matched come too
    assert landed(rel) == ["mnt", "mnt/data", "mnt/data/train", "mnt/data/train/a.json"]
    whole = Selection(includes=["mnt/data/train/*"], roots=["/mnt/data"])
    assert landed(whole) == landed(rel)
    directory = Selection(includes=["holdout"], roots=["/mnt/data"])  # a directory selects below it
    assert landed(directory) == ["mnt", "mnt/data", "mnt/data/holdout", "mnt/data/holdout/b.json"]


def test_exclude_wins_over_include() -> None:
    sel = Selection(includes=["mnt/data"], excludes=["holdout", "*.py"], roots=["/mnt/data"])
    assert landed(sel) == ["mnt", "mnt/data", "mnt/data/train", "mnt/data/train/a.json"]


def test_relative_lands_under_the_target_itself() -> None:
    sel = Selection(relative=True, roots=["/mnt/data"])
    assert landed(sel) == ["holdout", "holdout/b.json", "train", "train/a.json", "trainer.py"]


def test_relative_with_several_paths_keeps_each_under_its_name() -> None:
    names = ["a", "a/x", "a/x/f.bin", "b", "b/y", "b/y/f.bin"]
    sel = Selection(relative=True, roots=["/a/x", "/b/y"])
    assert landed(sel, names) == ["x", "x/f.bin", "y", "y/f.bin"]


def test_strip_components_as_tar() -> None:
    sel = Selection(strip_components=2, roots=["/mnt/data"])
    assert landed(sel) == ["holdout", "holdout/b.json", "train", "train/a.json", "trainer.py"]


def test_two_entries_on_one_name_is_refused_before_writing() -> None:
    names = ["a", "a/x", "a/x/f.bin", "b", "b/x", "b/x/f.bin"]
    with pytest.raises(UsageError, match=r"would both be restored as 'x/f\.bin'"):
        landed(Selection(strip_components=1, roots=["/a/x", "/b/x"]), names)


def test_relative_and_strip_together_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--relative and --strip-components"):
        Selection(relative=True, strip_components=1)
