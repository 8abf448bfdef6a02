"""Path patterns of a backup of ``/`` (adversarial pass on excludes.py).

Observed: the path "relative to the backed-up directory" of an entry of a backup of ``/`` lost
its first character (``etc/hostname`` became ``tc/hostname``), so a path pattern meant for
another directory (``tc/*``; ``log/*`` against ``/blog``) silently left out entries it does not
name.
"""

from __future__ import annotations

from coldkeep.repository.backup import walk
from coldkeep.repository.excludes import Excludes


def test_a_backup_of_root_matches_path_patterns_against_whole_names() -> None:
    excludes = Excludes(["tc/*"])  # names nothing under '/': '/tc' does not exist
    seen: list[str] = []
    for _, name, _ in walk(["/"], None, [], excludes=excludes):
        seen.append(name)
        if name.startswith("etc/") or ("/" in name and name.split("/")[0] > "etc"):
            break  # depth first, sorted: /etc's listing was reached (or passed without a name)
    assert seen[-1].startswith("etc/"), seen[-5:]
    assert excludes.excluded == 0
