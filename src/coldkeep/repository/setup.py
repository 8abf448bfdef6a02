"""From configuration to an open repository (the only place that reads [repository])."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING, Any, Protocol

from coldkeep.errors import ConfigError, NotFound
from coldkeep.repository.keyslots import read_passphrase
from coldkeep.repository.repository import Repository
from coldkeep.storage import open_backend
from coldkeep.storage.base import Backend

if TYPE_CHECKING:  # the pydantic models cost ~0.1 s to import: `backup` opens the repository without
    from coldkeep.config import Config, CopyConfig  # them when it can (cli/validated.py)


class BackendSection(Protocol):
    """Where a repository is: ``[repository]``, a ``[repository.copies.NAME]``, or the lean
    ``RepositorySection`` of :mod:`coldkeep.lean.config`."""

    @property
    def url(self) -> str: ...
    @property
    def endpoint_url(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...


class RepositorySectionLike(BackendSection, Protocol):
    @property
    def owner(self) -> str: ...
    @property
    def password_file(self) -> str: ...


def _owner(name: str) -> str | None:
    """The owner to chown to: only when running as root and the user exists."""
    if os.geteuid() != 0 or not name:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"repository.owner: no such OS user {name!r}", hint="create the user or change the key"
        ) from None
    return name


def backend_for(section: BackendSection, *, owner: str = "", create: bool = False) -> Backend:
    return open_backend(
        section.url,
        endpoint_url=section.endpoint_url,
        region=section.region,
        owner=_owner(owner),
        create=create,
        connect_timeout=section.connect_timeout,
        read_timeout=section.read_timeout,
    )


def init_repository(config: Config) -> dict[str, Any]:
    repo_cfg = config.repository
    backend = backend_for(repo_cfg, owner=repo_cfg.owner, create=True)
    passphrase = read_passphrase(repo_cfg.password_file)
    repo = Repository.init(backend, passphrase=passphrase, compression_level=repo_cfg.compression_level)
    try:
        return {"id": repo.config.id, "url": repo_cfg.url, "encrypted": repo.config.encrypted,
                "version": repo.config.version}  # fmt: skip
    finally:
        repo.close()


def open_repository(config: Config) -> Repository:
    return open_repository_section(config.repository)


def open_repository_section(repo_cfg: RepositorySectionLike) -> Repository:
    """The repository ``[repository]`` names (the pydantic model or the lean
    :class:`~coldkeep.lean.config.RepositorySection` of the per-segment WAL commands); the
    backend is closed again when opening fails."""
    backend = backend_for(repo_cfg, owner=repo_cfg.owner)
    try:
        return Repository.open(backend, lambda: read_passphrase(repo_cfg.password_file))
    except BaseException:
        backend.close()
        raise


def copy_section(config: Config, name: str) -> CopyConfig:
    try:
        return config.repository.copies[name]
    except KeyError:
        known = ", ".join(sorted(config.repository.copies)) or "none configured"
        raise NotFound(f"no repository copy named {name!r} ({known})",
                       hint="add [repository.copies.NAME] to the config") from None  # fmt: skip
