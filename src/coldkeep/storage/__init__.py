"""Storage: bytes at keys (see :mod:`coldkeep.storage.base` for the contract).

:func:`open_backend` is the one way the rest of coldkeep gets a backend from a repository URL.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from coldkeep.errors import ConfigError
from coldkeep.storage.base import Backend, Capabilities, ObjectInfo, validate_key, validate_prefix
from coldkeep.storage.wrappers import FaultBackend, RetryBackend, unwrap

__all__ = [
    "Backend",
    "Capabilities",
    "ObjectInfo",
    "open_backend",
    "unwrap",
    "validate_key",
    "validate_prefix",
]


def open_backend(
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "",
    owner: str | None = None,
    create: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
) -> Backend:
    """The backend for a repository URL, wrapped for retries (and faults, in tests).

    * ``file:///abs/path`` -> :class:`~coldkeep.storage.local.LocalBackend` (``owner`` owns what it
      creates when running as root; ``create`` makes the directory now);
    * ``s3://bucket/prefix`` -> :class:`~coldkeep.storage.s3.S3Backend` (``create`` creates the
      bucket if missing).

    The result is ``RetryBackend(FaultBackend(backend))``, the fault layer present only when the
    test hook ``COLDKEEP_FAULTS`` is set and testing is switched on (:mod:`coldkeep.testhooks`).  Any other URL is a :class:`~coldkeep.errors.ConfigError`.
    """
    try:
        parts = urlsplit(url)
        port = parts.port if parts.scheme == "s3" else None
    except ValueError:
        raise ConfigError(f"cannot parse repository URL {url!r}") from None
    backend: Backend
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ConfigError(f"file URL must be absolute, like file:///mnt/hdd/coldkeep (got {url!r})")
        if parts.query or parts.fragment:
            raise ConfigError(f"file URL must not have a query or fragment (got {url!r})")
        from coldkeep.storage.local import LocalBackend

        local = LocalBackend(path, owner=owner)
        if create:
            local.ensure_root()
        backend = local
    elif parts.scheme == "s3":
        if not parts.hostname or "@" in parts.netloc or port is not None:
            raise ConfigError(f"s3 URL needs a bucket, like s3://bucket/prefix (got {url!r})")
        if parts.query or parts.fragment:
            raise ConfigError(f"s3 URL must not have a query or fragment (got {url!r})")
        from coldkeep.storage.s3 import S3Backend

        backend = S3Backend(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint_url or None,
            region or None,
            create_bucket=create,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    else:
        raise ConfigError(f"repository URL must start with file:// or s3:// (got {url!r})")
    return RetryBackend(FaultBackend.from_env(backend))
