"""`drill --scratch DIR` naming a directory that does not exist (adversarial pass on drill.py).

Observed: "internal error: FileNotFoundError: ... /coldkeep-drill-w6um2qg3", exit 1 (invariant 7:
a bad argument is one line naming it, exit 2, never an internal error).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Site, one_line_error


def test_a_scratch_directory_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ok("repo", "init")
    with site.config.open("a") as f:  # a server that does not answer: the drill stops before it
        f.write(f'[postgres]\nenabled = true\ndsn = "host={tmp_path}/nosock port=5999 dbname=x user=postgres"\n'
                f'data_dir = "{tmp_path}"\n')  # fmt: skip
    missing = tmp_path / "no" / "such" / "dir"
    proc = site.run("drill", "--scratch", str(missing))
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert str(missing) in line and "internal error" not in line, line
