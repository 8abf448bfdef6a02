"""``[repository]`` of the configuration file, read without pydantic.

The per-segment WAL commands (:mod:`coldkeep.lean`), the background pusher and prefetcher, and
the commands that only open the repository once the file passed full validation
(``cli/validated.py``) need only this section.  It is read with the rules of
:mod:`coldkeep.config` (unknown keys, wrong types and bad URLs are refused; the lookup order and
the URL rule are this module's, which :mod:`coldkeep.config` uses too, and
``tests/unit/test_walfast.py`` keeps the rest in step), so a mistake in an unrelated section
cannot stop WAL archiving; ``coldkeep config check`` and ``pg setup`` validate the whole file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from coldkeep.errors import ConfigError, ConfigNotFound

SYSTEM_CONFIG = "/etc/coldkeep/coldkeep.toml"
ENV_CONFIG = "COLDKEEP_CONFIG"

#: every key of ``[repository]`` (``coldkeep.config.RepositoryConfig``; a unit test compares them)
REPOSITORY_KEYS = ("url", "endpoint_url", "region", "password_file", "owner", "compression_level",
                   "connect_timeout", "read_timeout", "copies")  # fmt: skip

#: ``connect_timeout`` / ``read_timeout`` of an S3 endpoint, seconds: (default, least, most)
TIMEOUTS = {"connect_timeout": (5.0, 0.5, 600.0), "read_timeout": (15.0, 1.0, 3600.0)}


@dataclass(frozen=True)
class RepositorySection:
    """``[repository]`` without ``copies``; ``source``: the file it was read from."""

    url: str = "file:///mnt/hdd/coldkeep"
    endpoint_url: str = ""
    region: str = ""
    password_file: str = ""
    owner: str = "postgres"
    compression_level: int = 3
    connect_timeout: float = TIMEOUTS["connect_timeout"][0]
    read_timeout: float = TIMEOUTS["read_timeout"][0]
    source: str = ""


def find_config_path(explicit: str | None) -> str:
    """``--config`` > ``$COLDKEEP_CONFIG`` > ``./coldkeep.toml`` > ``/etc/coldkeep/coldkeep.toml``;
    :class:`~coldkeep.errors.ConfigNotFound` naming where it looked."""
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigNotFound(looked=explicit)
        return explicit
    env = os.environ.get(ENV_CONFIG)
    if env:
        if not os.path.isfile(env):
            raise ConfigNotFound(looked=f"${ENV_CONFIG}={env}")
        return env
    candidates = [os.path.join(os.getcwd(), "coldkeep.toml"), SYSTEM_CONFIG]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigNotFound(looked=", ".join(candidates))


def repository_url_problem(url: str) -> str | None:
    """What is wrong with a repository URL, or ``None``: ``file:///absolute/path`` or
    ``s3://bucket[/prefix]`` without credentials."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return f"a URL cannot hold control characters (got {url!r})"
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if not parsed.path.startswith("/") or parsed.netloc not in ("", "localhost"):
            return f"file URL must be absolute, like file:///mnt/hdd/coldkeep (got {url!r})"
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            return f"s3 URL needs a bucket, like s3://bucket/prefix (got {url!r})"
        if parsed.password or "@" in parsed.netloc:
            return "credentials do not belong in the URL; use the environment"
    else:
        return f"repository URL must start with file:// or s3:// (got {url!r})"
    return None


def endpoint_url_problem(url: str) -> str | None:
    """What is wrong with an S3 ``endpoint_url``, or ``None``: empty (the provider's default) or
    ``http(s)://host[:port][/path]`` without credentials."""
    if not url:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return f"a URL cannot hold control characters (got {url!r})"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"must be an http:// or https:// URL with a host, like https://s3.example.org (got {url!r})"
    if parsed.password or "@" in parsed.netloc:
        return "credentials do not belong in the URL; use the environment"
    try:
        parsed.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return f"the port is not a number (got {url!r})"
    return None


def parse_repository_section(data: dict[str, Any], source: str) -> RepositorySection:
    """``[repository]`` of the parsed TOML ``data``; :class:`~coldkeep.errors.ConfigError` naming
    ``source`` and the key for anything :mod:`coldkeep.config` refuses there."""
    where = f"{source}: " if source else ""
    section = data.get("repository", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}repository: must be a table")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in REPOSITORY_KEYS:
            raise ConfigError(f"{where}repository.{key}: unknown key")
        if key == "copies":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}repository.copies: must be a table")
            continue
        if key == "compression_level":
            if type(value) is not int:
                raise ConfigError(
                    f"{where}repository.compression_level: Input should be a valid integer (got {value!r})"
                )
            if not -7 <= value <= 22:
                raise ConfigError(
                    f"{where}repository.compression_level: must be between -7 and 22 (got {value!r})"
                )
        elif key in TIMEOUTS:
            _, low, high = TIMEOUTS[key]
            if type(value) not in (int, float) or not low <= value <= high:
                raise ConfigError(
                    f"{where}repository.{key}: must be a number of seconds from {low:g} to {high:g} (got {value!r})"
                )
            value = float(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}repository.{key}: Input should be a valid string (got {value!r})")
        values[key] = value
    section_obj = RepositorySection(**values, source=source)
    problem = repository_url_problem(section_obj.url)
    if problem:
        raise ConfigError(f"{where}repository.url: {problem}")
    problem = endpoint_url_problem(section_obj.endpoint_url)
    if problem:
        raise ConfigError(f"{where}repository.endpoint_url: {problem}")
    return section_obj


def load_repository_section(explicit: str | None) -> RepositorySection:
    """``[repository]`` of the configuration file :func:`find_config_path` finds."""
    path = find_config_path(explicit)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}", hint="fix the line it names") from None
    return parse_repository_section(data, path)
