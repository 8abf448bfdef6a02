"""What every drill scenario shares: the result, the scratch directory, the repository copy a
drill reads instead of the repository (``--from-copy``), and the RTO projection."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldkeep.config import Config, RepositoryConfig
from coldkeep.errors import UsageError
from coldkeep.postgres.cluster import TempCluster, find_bin_dir
from coldkeep.processes import pid_alive
from coldkeep.repository.locks import machine_identity

#: MB/s that restores 1 TB in one hour (the spec's RTO at the spec's scale)
ONE_TB_IN_AN_HOUR_MB_S = 1e6 / 3600
#: in a drill's scratch directory: the drill's pid and machine, for a later drill to clean up after
#: one that was killed
OWNER_FILE = "drill-owner.json"

log = logging.getLogger("coldkeep.drill")


@dataclass
class DrillResult:
    scenario: str
    source: str  # "repository" or "copy NAME"
    ok: bool = False
    verdict: str = "failed"  # passed | failed | over-objective | skipped
    started_at: str = ""
    backup_id: str = ""
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    checks: list[dict[str, Any]] = field(default_factory=list)
    total_s: float = 0.0
    bytes: int = 0
    files_mb_s: float | None = None
    rto_objective_s: float = 3600.0
    projection: dict[str, Any] = field(default_factory=dict)
    rpo_s: float | None = None
    recovered_until: str = ""
    marked_at: str = ""
    restore_point: str = ""
    #: the seed of the random choices (the same seed chooses the same objects)
    seed: int | None = None
    #: why a scenario had nothing to protect ("" when it ran)
    skipped: str = ""
    #: what a scenario recovered (checkpoint names, dataset versions, the session…)
    recovered: dict[str, Any] = field(default_factory=dict)
    #: ``full``: each scenario's own result, by name
    scenarios: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "rto_s": self.total_s}  # the run record's figures (metrics) take rto_s

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": ok, "detail": detail})

    def skip(self, reason: str) -> None:
        """Nothing to protect here (no checkpoint, no dataset version…): reported, not failed."""
        self.skipped = reason


def copy_repository(config: Config, copy_name: str) -> RepositoryConfig:
    """``[repository]`` as it would read on a replacement machine whose repository is the copy
    ``copy_name`` (:class:`~coldkeep.errors.NotFound`, exit 5, naming the known copies).  The
    copy's ``password_file``, else the repository's: ``repo copy`` copies the key slots, so the
    repository's passphrase opens its copy."""
    from coldkeep.repository.setup import copy_section

    copy = copy_section(config, copy_name)
    return config.repository.model_copy(
        update={
            "url": copy.url,
            "endpoint_url": copy.endpoint_url,
            "region": copy.region,
            "password_file": copy.password_file or config.repository.password_file,
            "connect_timeout": copy.connect_timeout,
            "read_timeout": copy.read_timeout,
            "copies": {},
        }
    )


def config_reading(config: Config, copy_name: str | None) -> Config:
    """``config`` whose repository is the copy ``copy_name`` (``config`` itself without one): for
    the services that open the repository themselves."""
    if not copy_name:
        return config
    return config.model_copy(update={"repository": copy_repository(config, copy_name)})


def make_scratch(config: Config, scratch: Path | None) -> Path:
    """A new ``coldkeep-drill-*`` directory in ``scratch`` (default: the system temp directory)
    holding :data:`OWNER_FILE`, after removing what killed drills left there."""
    remove_dead_drills(Path(scratch or tempfile.gettempdir()), config)
    try:
        base = Path(tempfile.mkdtemp(prefix="coldkeep-drill-", dir=str(scratch) if scratch else None))
    except OSError as exc:
        raise UsageError(
            f"cannot make the drill's scratch directory in {scratch or tempfile.gettempdir()}: "
            f"{exc.strerror or exc}",
            hint="--scratch names an existing, writable directory with room for what the drill restores",
        ) from None
    (base / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "machine": list(machine_identity())}))
    return base


def remove_dead_drills(parent: Path, config: Config) -> None:
    """Stop the scratch server of a drill on this machine whose process is gone (killed: nothing
    else stops that server, nor removes its copy of the database), and remove its directory.
    Only directories holding a drill's :data:`OWNER_FILE` naming this machine (an earlier boot's
    drill is gone whatever its pid)."""
    for owner in parent.glob(f"coldkeep-drill-*/{OWNER_FILE}"):
        try:
            doc = json.loads(owner.read_text())
            pid, machine = int(doc["pid"]), tuple(doc["machine"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        here = machine_identity()
        if machine[:1] != here[:1] or (machine == here and (pid == os.getpid() or pid_alive(pid))):
            continue  # another machine's (shared scratch), or a drill still running here
        base = owner.parent
        if (base / "data" / "postmaster.pid").exists():
            TempCluster(base / "data.run", bin_dir=find_bin_dir(config.postgres.bin_dir),
                        os_user=config.postgres.os_user, data_dir=base / "data").stop(mode="immediate")  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
        log.warning("removed the scratch copy of a drill that was killed (pid %d): %s", pid, base)


def project(
    result: DrillResult, restore_s: float, size_bytes: int | None, fixed_s: float, size_key: str
) -> None:
    """MB/s of the restore (``result.bytes`` in ``restore_s``) and the RTO projected at
    ``size_bytes`` (recorded as ``size_key``): that many bytes at the measured rate plus
    ``fixed_s`` (the steps that do not grow with the size: replay, checks, load check)."""
    if restore_s > 0 and result.bytes:
        result.files_mb_s = round(result.bytes / 1e6 / restore_s, 1)
    out: dict[str, Any] = {"one_tb_in_an_hour_mb_s": round(ONE_TB_IN_AN_HOUR_MB_S, 1)}
    if result.files_mb_s and size_bytes:
        files = size_bytes / 1e6 / result.files_mb_s
        out.update({size_key: size_bytes, "projected_files_s": round(files, 1),
                    "projected_rto_s": round(files + fixed_s, 1)})  # fmt: skip
    result.projection = out
