"""`backup`, `snapshots` and `restore` skip the configuration models once the file's exact text
passed full validation, and behave as before: same snapshots, same errors for a bad file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
#: runs the real command in-process and reports whether pydantic was imported
PROBE = (
    "import sys; from coldkeep.cli.app import run; code = run(sys.argv[1:]); "
    "print(json.dumps({'code': code, 'pydantic': 'pydantic' in sys.modules}), file=sys.stderr)"
)


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLDKEEP_CONFIG"}
    env["COLDKEEP_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def probe(tmp_path: Path, *args: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", "import json; " + PROBE, *args],
        capture_output=True,
        text=True,
        env=env_for(tmp_path),
        timeout=120,
    )
    last = proc.stderr.strip().splitlines()[-1]
    return json.loads(last), proc


def test_backup_skips_pydantic_once_the_text_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nurl = "file://{tmp_path}/repo"\n\n[postgres]\nretention_days = 30\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    init = subprocess.run([COLDKEEP, "--config", str(cfg), "-q", "repo", "init"], env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert init.returncode == 0, init.stderr
    markers = list((tmp_path / "cache" / "validated-config").iterdir())
    assert len(markers) == 1  # `repo init` validated the whole file

    first, proc = probe(tmp_path, "--config", str(cfg), "--json", "backup", str(src))
    assert first == {"code": 0, "pydantic": False}, proc.stderr
    listed, proc = probe(tmp_path, "--config", str(cfg), "--json", "snapshots")
    assert listed == {"code": 0, "pydantic": False}, proc.stderr
    assert len(json.loads(proc.stdout)) == 1

    # an edit (still valid) is a new text: validated in full once, then remembered too
    cfg.write_text(cfg.read_text() + "# edited\n")
    second, proc = probe(tmp_path, "--config", str(cfg), "--json", "backup", str(src))
    assert second == {"code": 0, "pydantic": True}, proc.stderr
    third, proc = probe(tmp_path, "--config", str(cfg), "--json", "backup", str(src))
    assert third == {"code": 0, "pydantic": False}, proc.stderr
    assert json.loads(proc.stdout)["reused_files"] == 1


def test_a_bad_section_still_stops_backup_every_time(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    good = f'[repository]\nurl = "file://{tmp_path}/repo"\n'
    cfg.write_text(good)
    src = tmp_path / "src"
    src.mkdir()
    ok, proc = probe(tmp_path, "--config", str(cfg), "repo", "init")
    assert ok["code"] == 0, proc.stderr
    # [repository] is fine, another section is not: backup refuses, as it always did
    cfg.write_text(good + '[postgres]\nretention_days = "30"\n')
    for _ in range(2):  # a text that failed is never remembered
        bad, proc = probe(tmp_path, "--config", str(cfg), "backup", str(src))
        assert bad == {"code": 2, "pydantic": True}
        assert "postgres.retention_days" in proc.stderr
    assert not (tmp_path / "repo" / "snapshots").exists() or not any(
        (tmp_path / "repo" / "snapshots").iterdir()
    )
