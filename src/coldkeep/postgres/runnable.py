"""A coldkeep executable that PostgreSQL's OS user can run.

``archive_command`` and ``restore_command`` run as ``[postgres].os_user``.  When coldkeep lives in
a virtualenv whose interpreter that user cannot reach (a pyenv Python under ``/root``, mode 0700,
is common), :func:`build_runnable` makes one: a small virtualenv from the system Python of the
same version in a world-readable directory, seeing this environment's packages through a ``.pth``
file — or, when the postgres user cannot read those either, a copy of them.  Used by the tests
and ``make demo``; an installation for real use should simply put coldkeep where that user can
run it (``pg setup`` checks this before it changes anything).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from coldkeep.postgres import children
from coldkeep.postgres.children import SAFE_PATH


def runs_as(os_user: str, executable: str) -> bool:
    try:
        proc = children.run(
            [executable, "--version"], os_user=os_user, timeout=60, extra_env={"PATH": SAFE_PATH}
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _must(proc: subprocess.CompletedProcess[str]) -> str:
    """The output of a step that has to succeed (raises ``CalledProcessError`` otherwise)."""
    proc.check_returncode()
    return proc.stdout.strip()


def build_runnable(base: Path, os_user: str = "postgres") -> str | None:
    """The venv's own ``coldkeep`` if ``os_user`` can run it, else one built under ``base``;
    ``None`` when there is no system Python of this version to build it on."""
    own = str(Path(sys.executable).parent / "coldkeep")
    if runs_as(os_user, own):
        return own
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system_python = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if system_python is None:
        return None
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    venv = base / "venv"
    _must(children.run([system_python, "-m", "venv", "--without-pip", str(venv)], timeout=300))
    site = Path(_must(children.run([str(venv / "bin" / "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60)))  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    script = venv / "bin" / "coldkeep"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom coldkeep.cli.entry import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    pth = site / "coldkeep-env.pth"
    pth.write_text(f"import site; site.addsitedir({ours!r})\n")
    _must(children.run(["chmod", "-R", "a+rX", str(base)], timeout=300))
    if runs_as(os_user, str(script)):
        return str(script)
    # the packages themselves are out of reach: copy them (and coldkeep's own source)
    pth.unlink()
    shutil.copytree(ours, site, dirs_exist_ok=True, symlinks=True)
    package = Path(__file__).resolve().parent.parent
    shutil.copytree(
        package, site / "coldkeep", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    for stale in site.glob("__editable__*"):
        stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    for pth_file in site.glob("*.pth"):
        if "coldkeep" in pth_file.read_text(errors="replace"):
            pth_file.unlink()
    _must(children.run(["chmod", "-R", "a+rX", str(base)], timeout=300))
    return str(script) if runs_as(os_user, str(script)) else None
