"""What every checkpoints command starts from: the ``[checkpoints]`` section, the repository
(opened on first use), one run at a time on a root, and the kill points of the crash tests."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coldkeep import clock, testhooks
from coldkeep.checkpoints.inventory import (
    HotScan,
    decisions_for,
    list_rows,
    scan_hot,
    stored_checkpoints,
    verified_record,
)
from coldkeep.durable import fsync_dir
from coldkeep.errors import CheckpointBusy

if TYPE_CHECKING:
    from coldkeep.config import CheckpointsConfig, Config
    from coldkeep.repository.repository import Repository

KILL_ENV = "COLDKEEP_CKPT_KILL_AT"


def kill_point(stage: str) -> None:
    """SIGKILL this process the n-th time it reaches ``stage`` when ``$COLDKEEP_CKPT_KILL_AT``
    (``stage:n,…``) names it and testing is switched on; a no-op otherwise."""
    testhooks.kill_point(KILL_ENV, stage)


class Service:
    """The checkpoints service over ``config`` (usable from Python without the CLI)."""

    def __init__(
        self, config: Config, *, log: Callable[[str], None] | None = None, repo: Repository | None = None
    ) -> None:
        """``repo``: an open repository to use (its caller closes it; ``repro create`` passes its
        own); else the service opens ``config``'s on first use and closes it in :meth:`close`."""
        self.config = config
        self.cfg: CheckpointsConfig = config.checkpoints
        self.root = os.path.abspath(self.cfg.root)
        self.log = log or (lambda _text: None)
        self._repo: Repository | None = repo
        self._owns_repo = repo is None

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            from coldkeep.repository.setup import open_repository

            self._repo = open_repository(self.config)
        return self._repo

    def close(self) -> None:
        if self._repo is not None and self._owns_repo:
            self._repo.close()
            self._repo = None

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self) -> HotScan:
        return scan_hot(
            self.root, self.cfg.phase_glob, now=time.time(), settle_seconds=self.cfg.settle_seconds
        )

    def now(self) -> datetime:
        return clock.now()

    def list(self, *, phase: str | None = None, type_: str | None = None) -> dict[str, Any]:
        """``checkpoints list``: every checkpoint, hot or stored, and what is not one."""
        scan = self.scan()
        stored = stored_checkpoints(self.repo)
        rows = list_rows(
            scan, stored, verified_record(self.repo), decisions_for(scan, self.cfg, self.now()),
            phase=phase, type_=type_,
        )  # fmt: skip
        return {
            "checkpoints": rows,
            "unrecognised": [{"path": p, "reason": r} for p, r in scan.unrecognised],
            "leftovers": scan.leftovers,
        }

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """One run that changes the hot disk at a time (``archive``, ``recover``, ``promote``,
        ``rollback``): an exclusive ``flock`` of the root directory, released with the process."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise CheckpointBusy(f"{self.root} ({what})") from None
                raise
            yield
        finally:
            os.close(fd)


def remove_tree(path: str, *, stage: str = "") -> None:
    """Delete ``path`` (a directory coldkeep renamed aside) bottom up, then fsync its parent.
    ``stage``: a kill point reached after the first file is gone (crash tests)."""
    first = True
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
            if first and stage:
                first = False
                kill_point(stage)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    if os.path.isdir(path):
        shutil.rmtree(path)
    fsync_dir(os.path.dirname(path))
