"""The models of a reproducibility package: ``--models`` arguments resolved, then written into
``models/``.

*Which model* (:func:`resolve_models`, no side effects): an argument is

* a checkpoint, when it is written as a name ``checkpoints recover`` accepts — an exact name
  ``cet-d-phase3/best-20251015_092000``, ``cet-d-phase3-best`` (the newest ``best`` of phase 3, hot
  or stored) or a snapshot id — without a leading path; resolved by the checkpoints service
  (:func:`~coldkeep.checkpoints.recover.resolve_name`), hot or archived;
* else the path of a model directory.

An argument that is both (a directory in the working directory named like a checkpoint) is refused
as ambiguous — ``./NAME`` names the directory — unless it *is* that checkpoint's hot directory.  An
argument that is neither is not found (exit 5), with a hint naming both forms.  A hot checkpoint
that is not complete yet (``checkpoints backup`` would skip it) is refused.

*What goes in* (:func:`write_model`): a checkpoint is bundled as its **stored copy**, so the package
names its snapshot id:

* hot, not stored yet: stored first (the strict snapshot of ``checkpoints backup``);
* hot and stored: the newest stored copy, verified against the hot files (every stored byte read,
  every hot file hashed); a hot copy changed since it was stored is stored again, once;
* stored only (archived, its hot copy gone), or pinned by a snapshot id: that stored copy.

While it reads a hot copy it holds the checkpoints root's lock (``checkpoints archive`` cannot
remove the copy under it; a running archive makes this exit 4).  The stored copy is then written
by ``checkpoints export`` as ``models/cet-d-{phase}_{type}-{stamp}.tar.gz`` (+ ``.sha256``):
streamed from the repository with every chunk, every file's size and SHA-256 checked as it is read
(a damaged copy stops the package, exit 3, naming the file), members
``cet-d-{phase}/{type}-{stamp}/…`` — so ``tar -xzf`` in a models root (and ``repro restore``)
puts the checkpoint back byte-exact at its hot path.  A directory is written as
``models/DIRNAME.tar.gz`` (:func:`~coldkeep.repro.archive.tar_directory`), without a snapshot id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldkeep.checkpoints.export import export
from coldkeep.checkpoints.inventory import HotEntry, stored_checkpoints
from coldkeep.checkpoints.naming import CheckpointName, Latest, SnapshotRef, parse_ref
from coldkeep.checkpoints.recover import resolve_name
from coldkeep.checkpoints.service import Service
from coldkeep.checkpoints.store import store
from coldkeep.errors import (
    CheckpointDamaged,
    CheckpointError,
    CheckpointNotFound,
    ColdkeepError,
    NotFound,
    UsageError,
)
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repro.archive import tar_directory

HINT = (
    "give a model directory's path, or a checkpoint as `coldkeep checkpoints recover` takes it "
    "(cet-d-phase3/best-20251015_092000, cet-d-phase3-best, a snapshot id; `coldkeep checkpoints list`)"
)


@dataclass
class ModelSource:
    """One model to bundle: a directory by path, or a checkpoint (its name, hot copy, stored copy)."""

    name: str  # a directory's own name, or the checkpoint's name cet-d-{phase}/{type}-{stamp}
    ref: str  # the --models argument
    path: Path | None = None
    checkpoint: CheckpointName | None = None
    hot: HotEntry | None = None
    snapshot: Snapshot | None = None  # pinned by the argument, or set by write_model

    @property
    def file(self) -> str:
        """Its archive in the package."""
        if self.checkpoint is not None:
            return f"models/{self.checkpoint.phase_dir}_{self.checkpoint.dirname}.tar.gz"
        return f"models/{self.name}.tar.gz"

    @property
    def source(self) -> str:
        """Where it came from: its directory, or the checkpoint's hot directory, or the repository."""
        if self.path is not None:
            return str(self.path)
        return self.hot.path if self.hot is not None else "repository"

    def to_json(self) -> dict[str, Any]:
        """Its record in the package (``meta.package.models``, the RO-Crate)."""
        doc: dict[str, Any] = {"file": self.file, "name": self.name, "source": self.source,
                               "snapshot_id": self.snapshot.id if self.snapshot is not None else None}  # fmt: skip
        if self.checkpoint is not None:
            doc.update(checkpoint=self.checkpoint.name, ref=self.ref)
        return doc


def _checkpoint_ref(arg: str) -> bool:
    """``arg`` is written as a checkpoint reference (no leading path)."""
    ref = parse_ref(arg)
    return isinstance(ref, Latest | SnapshotRef) or (
        isinstance(ref, CheckpointName) and arg.strip() == ref.name
    )


def _resolve_checkpoint(svc: Service, arg: str) -> ModelSource:
    try:
        name, pinned = resolve_name(svc, arg)
    except (CheckpointNotFound, NotFound) as exc:
        raise NotFound(f"--models {arg}: {exc.message}", hint=HINT) from None
    hot = svc.scan().by_name().get(name.name)
    if pinned is None and hot is None and not stored_checkpoints(svc.repo).get(name.name):
        raise NotFound(
            f"--models {arg}: no checkpoint {name.name} on the hot disk or in the repository", hint=HINT
        )
    if pinned is None and hot is not None and not hot.assessment.complete:
        raise CheckpointError(f"--models {arg}: {name.name} is not complete yet ({hot.assessment.reason()})",
                              hint="package it once it is complete (`coldkeep checkpoints list` says why not)")  # fmt: skip
    return ModelSource(name.name, arg, checkpoint=name, hot=None if pinned else hot, snapshot=pinned)


def resolve_models(args: Sequence[str], svc: Service) -> list[ModelSource]:
    """Each ``--models`` argument as a model to bundle (see the module docstring)."""
    models: list[ModelSource] = []
    for arg in args:
        is_dir = os.path.isdir(arg)
        if _checkpoint_ref(arg):
            model = _resolve_checkpoint(svc, arg)
            assert model.checkpoint is not None
            hot_path = os.path.join(svc.root, model.checkpoint.phase_dir, model.checkpoint.dirname)
            if is_dir and not (os.path.isdir(hot_path) and os.path.samefile(arg, hot_path)):
                raise UsageError(f"--models {arg}: both a directory here and checkpoint {model.name}",
                                 hint=f"write ./{arg} for the directory")  # fmt: skip
        elif is_dir:
            path = Path(arg).absolute()
            model = ModelSource(path.name, arg, path=path)
        else:
            raise NotFound(f"--models {arg}: no such model directory, and not a checkpoint name", hint=HINT)
        models.append(model)
    files = [m.file for m in models]
    if len(set(files)) != len(files):
        twice = sorted(f for f in files if files.count(f) > 1)[0]
        raise UsageError(f"two models named {twice.removeprefix('models/').removesuffix('.tar.gz')!r}",
                         hint="each model goes in once: give each its own directory name or checkpoint")  # fmt: skip
    return models


def stored_copy(svc: Service, model: ModelSource) -> Snapshot:
    """The stored copy of the checkpoint ``model`` bundles (see the module docstring)."""
    assert model.checkpoint is not None
    if model.snapshot is not None:
        return model.snapshot
    if model.hot is None:
        return stored_checkpoints(svc.repo)[model.name][-1]
    with svc.exclusive("repro create"):
        if not os.path.isdir(model.hot.path):
            raise CheckpointError(f"{model.name}: its hot copy went away while the package was made",
                                  hint="run repro create again (it then takes the stored copy)")  # fmt: skip
        snaps = stored_checkpoints(svc.repo).get(model.name, [])
        snap, fresh = (
            (snaps[-1], False) if snaps else (store(svc.repo, model.checkpoint, model.hot.path), True)
        )
        for _attempt in range(2):
            verification = svc.repo.verify_snapshot(snap, against=model.hot.path)
            if verification.ok:
                return snap
            if any(p.kind == "damaged" for p in verification.problems) or fresh:
                break
            svc.log(f"{model.name}: the hot copy differs from its stored copy: storing it again")
            snap, fresh = store(svc.repo, model.checkpoint, model.hot.path), True
    shown = "; ".join(p.line() for p in verification.problems[:3])
    if any(p.kind == "damaged" for p in verification.problems):
        raise CheckpointDamaged(
            f"the stored copy of {model.name} (snapshot {snap.short_id}) does not verify: {shown}"
        )
    raise ColdkeepError(f"{model.name}: the hot copy changed while it was packaged ({shown})",
                        hint="package it again once nothing writes to it")  # fmt: skip


def write_model(svc: Service, model: ModelSource, models_dir: Path) -> dict[str, Any]:
    """Write ``model`` into the package's ``models/`` directory; returns its record."""
    if model.checkpoint is None:
        assert model.path is not None
        tar_directory(model.path, models_dir / Path(model.file).name, model.name)
        return model.to_json()
    model.snapshot = stored_copy(svc, model)
    export(svc, model.snapshot.id, fmt="tar.gz", to=str(models_dir))
    return model.to_json()
