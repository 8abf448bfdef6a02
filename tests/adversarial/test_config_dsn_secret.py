"""A password in ``[postgres].dsn`` is refused without being shown (adversarial pass on the
config check).

Observed: the error masked ``password=`` only up to the first space, so a quoted password with
spaces (``password='correct horse battery'``, valid libpq syntax) was printed as
``password=*** horse battery'`` — most of the secret on the terminal and in logs.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_coldkeep, toml_str


def test_a_quoted_password_with_spaces_is_masked_whole(tmp_path: Path) -> None:
    for value in ("'correct horse battery'", r"'correct horse \' battery'", "'correct horse battery"):
        config = tmp_path / "coldkeep.toml"
        dsn = f"host=/tmp port=5432 user=postgres password={value} dbname=x"
        config.write_text(
            f'[repository]\nurl = "file://{tmp_path}/repo"\n[postgres]\nenabled = true\ndsn = {toml_str(dsn)}\n'
        )
        proc = run_coldkeep(config, "config", "check")
        assert proc.returncode == 2, proc.stderr
        assert "must not contain a password" in proc.stderr, proc.stderr
        assert "horse" not in proc.stderr and "battery" not in proc.stderr, proc.stderr
