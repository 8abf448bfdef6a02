"""From configuration to an open repository (the only place that reads [repository])."""

from __future__ import annotations

import os
import pwd
from typing import Any

from coldkeep.config import Config, CopyConfig, RepositoryConfig
from coldkeep.errors import ConfigError, NotFound
from coldkeep.repository.crypto import read_passphrase
from coldkeep.repository.repository import Repository
from coldkeep.storage import open_backend
from coldkeep.storage.base import Backend


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


def backend_for(section: RepositoryConfig | CopyConfig, *, owner: str = "", create: bool = False) -> Backend:
    return open_backend(
        section.url,
        endpoint_url=section.endpoint_url,
        region=section.region,
        owner=_owner(owner),
        create=create,
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
    repo_cfg = config.repository
    backend = backend_for(repo_cfg, owner=repo_cfg.owner)
    return Repository.open(backend, lambda: read_passphrase(repo_cfg.password_file))


def copy_section(config: Config, name: str) -> CopyConfig:
    try:
        return config.repository.copies[name]
    except KeyError:
        known = ", ".join(sorted(config.repository.copies)) or "none configured"
        raise NotFound(f"no repository copy named {name!r} ({known})",
                       hint="add [repository.copies.NAME] to the config") from None  # fmt: skip
