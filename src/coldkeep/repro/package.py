"""``repro create``: the spec's reproducibility package, as one ``NAME.tar.gz`` and in the repository.

Layout (the spec's, under one top directory ``NAME/``)::

    README.md  hardware_specs.txt  software_versions.txt  gpu_driver_version.txt
    dataset/   {prefix}_{version}_{date}.tar.gz (+ .sha256)    the dataset version's export
    models/    MODEL.tar.gz                                    one per --models (repro/models.py:
               cet-d-{phase}_{type}-{stamp}.tar.gz (+ .sha256)  a checkpoint, by name; DIR.tar.gz a directory)
    code/      REPO_COMMIT.tar.gz  git_info.txt  [uncommitted.patch]
    results/   DIR/… per --results   training_logs/… per --training-logs
    ro-crate-metadata.json  checksums.sha256

``checksums.sha256`` covers every file but itself (``sha256sum -c checksums.sha256`` in the
unpacked directory); ``ro-crate-metadata.json`` describes every file but itself
(``checksums.sha256`` without a hash: the list covers the crate, so the crate cannot hash it).

Order: every input is checked first (dataset version, models, git tree, interpreter); the package
is built in a staging directory beside ``--out`` (``.NAME.repro-*``, removed at the end and by
the next run after a crash), written as ``NAME.tar.gz`` (deterministic, atomic) and its
``.sha256``, then stored in the repository as a strict snapshot of kind ``repro`` (Tier-1) whose
document — the last object written — records it: killed at any point, a package is recorded whole
or not at all, and a rerun completes it.  Names are immutable: a recorded name is refused.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldkeep import __version__, clock
from coldkeep.datasets.export import export_version
from coldkeep.datasets.manifest import check_version
from coldkeep.datasets.versions import DatasetVersion, find_version
from coldkeep.durable import write_atomic
from coldkeep.errors import NotFound, PackageExists, UsageError
from coldkeep.repository.backup import Backup
from coldkeep.repository.locks import locked
from coldkeep.repository.repository import Repository
from coldkeep.repository.snapshot import Snapshot
from coldkeep.repro import environment
from coldkeep.repro.archive import checksums, tar_directory
from coldkeep.repro.crate import METADATA, build_crate
from coldkeep.repro.models import ModelSource, resolve_models, write_model

if TYPE_CHECKING:
    from coldkeep.checkpoints.service import Service

KIND = "repro"
NAME_TAG = "name"
CHECKSUMS = "checksums.sha256"


@dataclass
class PackageRequest:
    name: str
    dataset: str
    models: list[str]
    code: str
    out: str
    results: list[str] = field(default_factory=list)
    training_logs: list[str] = field(default_factory=list)
    python: str | None = None
    allow_dirty: bool = False
    dataset_prefix: str = "iccm_dataset"


@dataclass
class PackageResult:
    name: str
    path: str
    sha256: str
    bytes: int
    files: int
    snapshot: Snapshot

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "bytes": self.bytes,
                "files": self.files, "snapshot_id": self.snapshot.id, **self.snapshot.meta}  # fmt: skip


def packages(repo: Repository) -> list[Snapshot]:
    """Every recorded package, oldest first (one per name: the first recorded)."""
    seen: dict[str, Snapshot] = {}
    for snap in repo.list_snapshots(kind=KIND):
        seen.setdefault(snap.tags.get(NAME_TAG, ""), snap)
    return sorted((s for n, s in seen.items() if n), key=lambda s: s.time)


def find_package(repo: Repository, name: str) -> Snapshot:
    for snap in packages(repo):
        if snap.tags.get(NAME_TAG) == name:
            return snap
    raise NotFound(
        f"no reproducibility package {name!r}", hint="`coldkeep repro list` shows the recorded ones"
    )


def _copy_results(pkg: Path, results: Sequence[str], logs: Sequence[str]) -> None:
    for arg in results:
        src = Path(arg)
        if not src.is_dir():
            raise NotFound(f"--results {arg}: no such directory")
        dest = pkg / "results" / src.absolute().name
        if dest.exists():
            raise UsageError(f"--results {arg}: a results directory named {dest.name} is given twice")
        shutil.copytree(src, dest, symlinks=True)
    matches = sorted(
        {os.path.abspath(p) for pattern in logs for p in glob.glob(pattern) if os.path.isfile(p)}
    )
    if logs and not matches:
        raise NotFound(f"--training-logs {' '.join(logs)}: no file matches")
    if not matches:
        return
    # names relative to the matches' common directory, '/' as '__': the spec's `cp */training.log`
    # would keep only the last of several training.log files
    common = os.path.commonpath([os.path.dirname(p) for p in matches])
    (pkg / "results" / "training_logs").mkdir(parents=True, exist_ok=True)
    for path in matches:
        shutil.copy2(
            path, pkg / "results" / "training_logs" / os.path.relpath(path, common).replace("/", "__")
        )


def _model_line(m: ModelSource) -> str:
    if m.checkpoint is None:
        return f"- `{m.file}`: model {m.name} (from {m.path})"
    snap = m.snapshot.id if m.snapshot is not None else "?"
    return (f"- `{m.file}`: checkpoint {m.name} (coldkeep snapshot {snap}); "
            f"`tar -xzf` in a models root puts it at `{m.name}/`")  # fmt: skip


def _readme(req: PackageRequest, created: str, dataset: dict[str, Any], code: environment.GitSource,
            models: list[ModelSource], python: str) -> str:  # fmt: skip
    lines = [
        f"# {req.name}", "", f"Reproducibility package made by coldkeep {__version__} on {created}.", "",
        "## Contents", "",
        f"- `dataset/{dataset['file'].rsplit('/', 1)[-1]}`: dataset version {dataset['version']} "
        f"(content hash {dataset['content_sha256']}); unpack it and run `sha256sum -c SHA256SUMS` inside",
        *(_model_line(m) for m in models),
        f"- `code/`: `git archive` of commit {code.commit}" + (f" (branch {code.branch})" if code.branch else "")
        + ("; `uncommitted.patch` holds the changes that were not committed" if code.dirty else ""),
        "- `results/`: results and training logs", "- `hardware_specs.txt`, `software_versions.txt`, "
        f"`gpu_driver_version.txt`: the machine and the training environment ({python})",
        "- `ro-crate-metadata.json`: RO-Crate 1.1 description of every file", "",
        "## Setup", "", "```bash", "sha256sum -c checksums.sha256          # every file, in this directory",
        "python -m venv env && env/bin/pip install -r <(sed -n '/^## pip list/,/^$/p' software_versions.txt | grep '==')",
        f"mkdir code && tar -xzf code/*.tar.gz -C code{' && git -C code/* apply ../../code/uncommitted.patch' if code.dirty else ''}",
        "tar -xzf dataset/*.tar.gz                # the dataset tree with manifest.json and SHA256SUMS",
        "```", "",
    ]  # fmt: skip
    return "\n".join(lines)


def create_package(repo: Repository, req: PackageRequest, checkpoints: Service) -> PackageResult:
    """Build, write and record the package (see the module docstring).  ``checkpoints``: the
    checkpoints service over ``repo``, which resolves and exports models given by checkpoint name."""
    check_version(req.name)
    out = Path(os.path.abspath(req.out))
    if not out.is_dir():
        raise UsageError(f"--out {req.out}: no such directory", hint="create it first")
    for stale in out.glob(f".{req.name}.repro-*"):  # a crashed run's staging directory
        shutil.rmtree(stale, ignore_errors=True)
    with locked(repo.backend, "repro create", exclusive=False):
        if any(s.tags.get(NAME_TAG) == req.name for s in packages(repo)):
            raise PackageExists(req.name)
        version = find_version(repo, req.dataset)
        models = resolve_models(req.models, checkpoints)
        code = environment.git_source(req.code, allow_dirty=req.allow_dirty)
        python = req.python or environment.default_python()
        software = environment.software_versions(python)
        staging = Path(tempfile.mkdtemp(prefix=f".{req.name}.repro-", dir=out))
        try:
            return _build(
                repo, checkpoints, req, out, staging / req.name, version, models, code, python, software
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build(repo: Repository, svc: Service, req: PackageRequest, out: Path, pkg: Path, version: DatasetVersion, models: list[ModelSource],
           code: environment.GitSource, python: str, software: str) -> PackageResult:  # fmt: skip
    now = clock.now()
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for sub in ("dataset", "models", "code", "results"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "hardware_specs.txt").write_text(environment.hardware_specs(), encoding="utf-8")
    (pkg / "software_versions.txt").write_text(software, encoding="utf-8")
    (pkg / "gpu_driver_version.txt").write_text(environment.gpu_driver(), encoding="utf-8")
    export = export_version(repo, version, pkg / "dataset", prefix=req.dataset_prefix)
    dataset = {"file": os.path.relpath(export.path, pkg), "version": version.name,
               "content_sha256": version.content_sha256, "snapshot_id": version.snapshot.id}  # fmt: skip
    model_docs = [write_model(svc, model, pkg / "models") for model in models]
    repo_name = Path(code.directory).name or "code"
    code_file = f"code/{repo_name}_{code.short}.tar.gz"
    environment.git_archive(code, pkg / code_file, repo_name)
    (pkg / "code" / "git_info.txt").write_text(code.info(), encoding="utf-8")
    if code.patch:
        (pkg / "code" / "uncommitted.patch").write_text(code.patch, encoding="utf-8")
    _copy_results(pkg, req.results, req.training_logs)
    (pkg / "README.md").write_text(_readme(req, created, dataset, code, models, python), encoding="utf-8")
    code_doc = {"file": code_file, "commit": code.commit, "branch": code.branch, "remotes": code.remotes,
                "dirty": code.dirty}  # fmt: skip
    _, files = checksums(pkg)
    crate = build_crate(name=req.name, created=created, files=files, tool_version=__version__, dataset=dataset,
                        code=code_doc, models=model_docs)  # fmt: skip
    crate["@graph"].append({"@id": CHECKSUMS, "@type": "File", "name": CHECKSUMS, "encodingFormat": "text/plain",
                            "description": "sha256sum list of every other file of the package"})  # fmt: skip
    crate["@graph"][1]["hasPart"].append({"@id": CHECKSUMS})
    (pkg / METADATA).write_text(json.dumps(crate, indent=2) + "\n", encoding="utf-8")
    sums, files = checksums(pkg, skip=CHECKSUMS)
    (pkg / CHECKSUMS).write_bytes(sums)
    archive = out / f"{req.name}.tar.gz"
    sha = tar_directory(pkg, archive, req.name, mtime=int(now.timestamp()))
    write_atomic(str(archive) + ".sha256", f"{sha}  {archive.name}\n".encode(), mode=0o644)
    meta = {"package": {"created": created, "archive": archive.name, "sha256": sha, "bytes": archive.stat().st_size,
                        "python": python, "dataset": dataset, "code": code_doc, "models": model_docs}}  # fmt: skip
    result = Backup(repo).run([pkg], base=pkg, tags={NAME_TAG: req.name}, label=f"reproducibility package {req.name}",
                              meta=meta, kind=KIND, parent=None, strict=True)  # fmt: skip
    return PackageResult(req.name, str(archive), sha, archive.stat().st_size, len(files) + 1, result.snapshot)
