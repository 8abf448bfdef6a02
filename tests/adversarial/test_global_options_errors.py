"""``--json`` after the subcommand also for a command line that does not parse (adversarial pass
on cli/app.py).

Observed: ``coldkeep snapshots --json --bogus`` printed its usage error as text on stderr and
nothing on stdout, while ``coldkeep --json snapshots --bogus`` printed the JSON error document: a
script that puts --json after the subcommand (as the README now shows) got no JSON to parse.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Site


def test_a_usage_error_is_json_whichever_side_of_the_subcommand_json_is(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    for argv in (["--json", "snapshots", "--bogus"], ["snapshots", "--json", "--bogus"],
                 ["restore", "latest", "--json", "--no-such-option"]):  # fmt: skip
        proc = site.run(*argv)
        assert proc.returncode == 2, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["error"]["exit_code"] == 2 and doc["error"]["type"] == "UsageError", doc
