"""What a reproducibility package records about the machine, the software and the code.

* :func:`hardware_specs` — ``lshw`` where installed, else ``/proc/cpuinfo``, ``lscpu``, ``lsblk``
  and ``/proc/meminfo``;
* :func:`software_versions` — the *training* environment (the interpreter given, not coldkeep's):
  its ``pip list --format=freeze`` (plain ``pip freeze`` writes ``@ file://`` lines in conda
  environments), conda's ``env export`` where that interpreter lives in a conda environment,
  the OS, the kernel and that Python's version;
* :func:`gpu_driver` — ``nvidia-smi``'s driver, CUDA and GPU names, or a line saying there is none;
* :func:`git_source` — the code: ``git archive`` of a revision with its commit, branch and remotes;
  a dirty working tree is refused unless allowed, and then its diff against ``HEAD`` is kept as a
  patch.

Every program runs with a timeout and without a shell; a program that is missing or fails
becomes a line in the file saying so (hardware and software records are descriptive), except
for git and the interpreter, which the package cannot do without (:class:`UsageError`).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from coldkeep.errors import UsageError

TIMEOUT = 120


def _run(args: list[str], *, cwd: str | None = None, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``args``; 127 when the program is missing."""
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, "", f"{args[0]}: not installed"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, "", f"{args[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def _section(title: str, body: str) -> str:
    return f"## {title}\n{body.rstrip()}\n\n"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"


def hardware_specs() -> str:
    """The machine, as text (see the module docstring)."""
    out = [f"# hardware of {platform.node()}\n\n"]
    if shutil.which("lshw"):
        code, text, err = _run(["lshw", "-quiet"])
        out.append(_section("lshw", text if code == 0 else f"(lshw failed: {err.strip()})"))
        return "".join(out)
    out.append("(lshw is not installed: /proc, lscpu, lsblk and meminfo below)\n\n")
    cpu = [line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("model name")]
    out.append(
        _section(
            "CPU (/proc/cpuinfo)", f"{cpu[0].split(':', 1)[-1].strip() if cpu else 'unknown'} x {len(cpu)}"
        )
    )
    for title, args in (
        ("lscpu", ["lscpu"]),
        ("lsblk", ["lsblk", "-o", "NAME,SIZE,TYPE,MODEL,ROTA,MOUNTPOINT"]),
    ):
        code, text, err = _run(args)
        out.append(_section(title, text if code == 0 else f"({err.strip() or f'{title} failed'})"))
    memory = [
        line for line in _read("/proc/meminfo").splitlines() if line.startswith(("MemTotal", "SwapTotal"))
    ]
    out.append(_section("memory (/proc/meminfo)", "\n".join(memory)))
    return "".join(out)


def default_python() -> str:
    """The training environment's interpreter when ``--python`` is not given: the active conda
    environment's, else the active virtualenv's, else ``python3`` on ``PATH``."""
    for var in ("CONDA_PREFIX", "VIRTUAL_ENV"):
        prefix = os.environ.get(var)
        if prefix and os.access(os.path.join(prefix, "bin", "python"), os.X_OK):
            return os.path.join(prefix, "bin", "python")
    return shutil.which("python3") or "python3"


def software_versions(python: str) -> str:
    """The training environment of the interpreter ``python`` (see the module docstring)."""
    code, version, err = _run([python, "-c", "import sys; print(sys.version.split()[0]); print(sys.prefix)"])
    if code != 0:
        raise UsageError(f"cannot run the interpreter {python}: {err.strip() or f'exit {code}'}",
                         hint="pass --python with the training environment's interpreter")  # fmt: skip
    py_version, prefix = [*version.splitlines(), "", ""][:2]
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.platform(),
    )
    out = [
        f"# software of the training environment {python}\n\n",
        _section("system", f"os: {os_name}\nkernel: {platform.release()}\nmachine: {platform.machine()}"),
        _section("python", f"interpreter: {python}\nversion: {py_version}\nprefix: {prefix}"),
    ]
    code, freeze, err = _run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"])
    out.append(
        _section(
            "pip list --format=freeze",
            freeze if code == 0 else f"(pip is not available: {err.strip()[-300:]})",
        )
    )
    if prefix and os.path.isdir(os.path.join(prefix, "conda-meta")):
        conda = shutil.which("conda") or os.path.join(prefix, "bin", "conda")
        code, export, err = _run([conda, "env", "export", "--prefix", prefix])
        out.append(
            _section("conda env export", export if code == 0 else f"(conda env export failed: {err.strip()})")
        )
    return "".join(out)


def gpu_driver() -> str:
    """The NVIDIA driver, CUDA version and GPUs, or a line saying none was found."""
    if not shutil.which("nvidia-smi"):
        return "no NVIDIA GPU driver found: nvidia-smi is not installed on this machine\n"
    code, text, err = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if code != 0:
        return f"nvidia-smi failed (exit {code}): {err.strip()}\n"
    _code, banner, _err = _run(["nvidia-smi"])
    found = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    cuda = found.group(1) if found else "unknown"
    gpus = [line.strip() for line in text.splitlines() if line.strip()]
    drivers = sorted({line.rsplit(",", 1)[-1].strip() for line in gpus})
    lines = [f"driver_version: {', '.join(drivers)}", f"cuda_version: {cuda}"]
    lines += [f"gpu {i}: {line.rsplit(',', 1)[0].strip()}" for i, line in enumerate(gpus)]
    return "\n".join(lines) + "\n"


@dataclass
class GitSource:
    """The code: where it is, the revision asked for and what it resolved to."""

    directory: str
    rev: str
    commit: str = ""
    branch: str = ""
    remotes: list[str] = field(default_factory=list)
    dirty: bool = False
    #: ``git diff HEAD --binary`` of a dirty tree (``--allow-dirty``), else ``""``
    patch: str = ""

    @property
    def short(self) -> str:
        return self.commit[:12]

    def info(self) -> str:
        lines = [f"directory: {self.directory}", f"revision: {self.rev}", f"commit: {self.commit}",
                 f"branch: {self.branch or '(detached)'}", f"dirty: {'yes, see uncommitted.patch' if self.dirty else 'no'}"]  # fmt: skip
        lines += [f"remote: {r}" for r in self.remotes] or ["remote: (none)"]
        return "\n".join(lines) + "\n"


def _git(directory: str, *args: str) -> str:
    code, out, err = _run(["git", "-C", directory, *args])
    if code != 0:
        raise UsageError(f"git {' '.join(args)} in {directory} failed: {err.strip() or f'exit {code}'}",
                         hint="--code names a git working tree, optionally @REVISION")  # fmt: skip
    return out


def parse_code(arg: str) -> tuple[str, str]:
    """``GIT_DIR[@REV]`` → (absolute directory, revision; default ``HEAD``)."""
    if os.path.isdir(arg) or "@" not in arg:
        return os.path.abspath(arg), "HEAD"
    directory, _, rev = arg.rpartition("@")
    return os.path.abspath(directory), rev or "HEAD"


def git_source(arg: str, *, allow_dirty: bool = False) -> GitSource:
    """The code ``GIT_DIR[@REV]`` (see the module docstring): a tree with uncommitted changes to
    tracked files is refused when ``REV`` is ``HEAD`` unless ``allow_dirty``, which keeps the diff."""
    directory, rev = parse_code(arg)
    if not os.path.isdir(directory):
        raise UsageError(
            f"--code {arg}: {directory} is not a directory", hint="name the training code's git working tree"
        )
    source = GitSource(directory, rev)
    source.commit = _git(directory, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    code, branch, _ = _run(
        ["git", "-C", directory, "symbolic-ref", "--short", "-q", "HEAD" if rev == "HEAD" else rev]
    )
    source.branch = branch.strip() if code == 0 else ""
    source.remotes = sorted(
        {" ".join(line.split()[:2]) for line in _git(directory, "remote", "-v").splitlines()}
    )
    if rev == "HEAD":
        status = _git(directory, "status", "--porcelain", "--untracked-files=no")
        source.dirty = bool(status.strip())
        if source.dirty and not allow_dirty:
            changed = ", ".join(line[3:] for line in status.splitlines()[:5])
            raise UsageError(
                f"the code in {directory} has uncommitted changes ({changed}): the package would not hold the code that ran",
                hint="commit them, name a revision with --code DIR@REV, or pass --allow-dirty to add the diff as a patch",
            )
        if source.dirty:
            source.patch = _git(directory, "diff", "HEAD", "--binary")
    return source


def git_archive(source: GitSource, dest: Path, prefix: str) -> None:
    """``git archive --format=tar.gz`` of the source's commit into ``dest`` (deterministic: git
    stamps every entry with the commit's time and gzips without a name or time)."""
    _git(
        source.directory,
        "archive",
        "--format=tar.gz",
        f"--prefix={prefix}/",
        f"--output={dest}",
        source.commit,
    )
