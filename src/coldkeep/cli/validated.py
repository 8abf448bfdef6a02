"""Configuration files that passed full validation, remembered so that a command that needs only
``[repository]`` (``backup``, ``snapshots``, ``restore``) can skip the configuration models.

Importing :mod:`coldkeep.config` (pydantic and its models) costs ~0.1 s of CPU, a fifth of an
unchanged re-backup of 10,000 files.  Validation is a pure function of the file's text, so once
a text passed it (with this coldkeep and this ``config.py``), the same text passes again: the
command then reads ``[repository]`` with the lean parser of :mod:`coldkeep.lean.config` (which
gives the same values for a valid file; a unit test compares them).  A text that never passed
has no marker and goes through the full validation, so errors are reported exactly as before.

Markers are empty files ``<cache>/validated-config/<sha256>`` (the cache directory of the index
cache), the digest covering the coldkeep version, ``config.py``'s size and mtime and the text.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

import coldkeep
from coldkeep.errors import ColdkeepError
from coldkeep.lean import config as lean_config

MARKER_DIR = "validated-config"


def _marker(text: str) -> Path | None:
    from coldkeep.repository.index import cache_root

    try:
        st = os.stat(os.path.join(os.path.dirname(coldkeep.__file__), "config.py"))
    except OSError:
        return None
    h = hashlib.sha256(f"{coldkeep.__version__}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    h.update(text.encode("utf-8", "surrogateescape"))
    return cache_root() / MARKER_DIR / h.hexdigest()


def remember(text: str) -> None:
    """Record that ``text`` passed full validation (best effort: a cache that cannot be written
    only means the next command validates again)."""
    marker = _marker(text)
    if marker is None or marker.exists():
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker.touch(mode=0o600)
    except OSError:
        pass


def repository_section(explicit: str | None) -> lean_config.RepositorySection | None:
    """``[repository]`` of the configuration file when its text passed full validation before;
    ``None`` otherwise (the caller validates the whole file)."""
    try:
        path = lean_config.find_config_path(explicit)
        text = Path(path).read_text(encoding="utf-8")
    except (ColdkeepError, OSError, UnicodeDecodeError):
        return None
    marker = _marker(text)
    if marker is None or not marker.exists():
        return None
    try:
        return lean_config.parse_repository_section(tomllib.loads(text), path)
    except (ColdkeepError, tomllib.TOMLDecodeError):
        return None
