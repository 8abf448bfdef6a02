"""What a backup reads for the paths it was given: each stored once, symlinked directories followed
at the top level (:mod:`coldkeep.repository.backup`)."""

from __future__ import annotations

import os
from pathlib import Path


def outermost(sources: list[Path]) -> tuple[list[Path], list[str]]:
    """The sources without repeats and without those inside another source (each is stored once,
    as part of the outer one), in the order given, and a note for each one left out."""
    kept: list[Path] = []
    notes: list[str] = []
    for source in sources:
        outer = next((k for k in kept if k == source or k in source.parents), None)
        if outer is None:
            inner = [k for k in kept if source in k.parents]
            for k in inner:
                notes.append(f"{k} is inside {source}: backed up once, as part of {source}")
            kept = [k for k in kept if k not in inner] + [source]
        elif outer == source:
            notes.append(f"{source} was named twice: backed up once")
        else:
            notes.append(f"{source} is inside {outer}: backed up once, as part of {outer}")
    return kept, notes


def followed_sources(paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """The sources that are symlinks to directories, each with the directory it names (read in
    its place, as ``tar -h`` does for the top level and restic for its arguments), and a note for
    each.  Dangling links and links to files stay links."""
    read_from: dict[str, str] = {}
    notes: list[str] = []
    for path in paths:
        if os.path.islink(path) and os.path.isdir(path):
            read_from[path] = os.path.realpath(path)
            notes.append(
                f"{path} is a symlink to the directory {read_from[path]}: backed up that directory "
                "under the link's name (symlinks inside it are kept as symlinks)"
            )
    return read_from, notes
