"""``coldkeep repro …`` — reproducibility packages: create, verify, list, restore.

Exit codes: 0 ok; 1 failed (a package name recorded already, a file changed while read);
2 usage (a dirty git tree without --allow-dirty, an interpreter that does not run, a non-empty
restore target); 3 integrity (``verify`` found failing files, damaged data); 4 lock held;
5 not found (package, dataset version, model directory or checkpoint name).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import open_repo
from coldkeep.errors import EXIT_INTEGRITY, IntegrityError
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console


@click.group()
def repro() -> None:
    """Reproducibility packages: dataset, models, code, environment, results, checksums, RO-Crate.

    \b
    Exit codes: 0 ok, 1 failed (name recorded already), 2 usage (dirty git tree, bad --python,
    non-empty target), 3 integrity (failing files, a damaged stored checkpoint), 4 lock held (also
    a running `checkpoints archive`), 5 not found (also a --models name that is no checkpoint).
    """


@repro.command()
@click.option("--name", required=True, help="package name: NAME.tar.gz, and its name in the repository")
@click.option("--dataset", "dataset", required=True, metavar="VERSION", help="a recorded dataset version")
@click.option("--models", "models", multiple=True, required=True, metavar="NAME|DIR",
              help="a checkpoint as `checkpoints recover` takes it (cet-d-phase3/best-20251015_092000, "
                   "cet-d-phase3-best, a snapshot id; hot or archived) or a model directory "
                   "(repeatable; also several after one --models)")  # fmt: skip
@click.argument("more_models", nargs=-1, metavar="[NAME|DIR]...")
@click.option(
    "--code", required=True, metavar="GIT_DIR[@REV]", help="the training code (default revision HEAD)"
)
@click.option("--results", "results", multiple=True, metavar="DIR", help="a results directory (repeatable)")
@click.option(
    "--training-logs", "logs", multiple=True, metavar="GLOB", help="training logs, e.g. 'runs/*/training.log'"
)
@click.option("--python", "python", default=None, metavar="PATH",
              help="the training environment's interpreter (default: $CONDA_PREFIX's, $VIRTUAL_ENV's, python3)")  # fmt: skip
@click.option("--out", "out", default=".", show_default=True, metavar="DIR", help="where NAME.tar.gz goes")
@click.option(
    "--allow-dirty",
    is_flag=True,
    help="package a git tree with uncommitted changes, adding the diff as a patch",
)
@pass_app
@recorded("repro create")
def create(app: AppContext, name: str, dataset: str, models: tuple[str, ...], more_models: tuple[str, ...],
           code: str, results: tuple[str, ...], logs: tuple[str, ...], python: str | None, out: str,
           allow_dirty: bool) -> None:  # fmt: skip
    """Build NAME.tar.gz (the spec's layout, checksums.sha256, ro-crate-metadata.json) and record it."""
    from coldkeep.checkpoints import Service
    from coldkeep.repro.package import PackageRequest, create_package

    req = PackageRequest(name=name, dataset=dataset, models=[*models, *more_models], code=code, out=out,
                         results=list(results), training_logs=list(logs), python=python, allow_dirty=allow_dirty,
                         dataset_prefix=app.config().datasets.export_prefix)  # fmt: skip
    with open_repo(app) as repo:
        result = create_package(repo, req, Service(app.config(), log=app.out.info, repo=repo))
    app.out.emit(result.to_json(), lambda c: c.print(
        f"package {plain(result.name)}: {plain(result.path)} ({human_bytes(result.bytes)}, {result.files} files), "
        f"sha256 {result.sha256}; recorded as snapshot {result.snapshot.short_id}"))  # fmt: skip


@repro.command("list")
@pass_app
def list_(app: AppContext) -> None:
    """Every recorded package, oldest first."""
    from coldkeep.repro.package import NAME_TAG, packages

    with open_repo(app) as repo:
        found = packages(repo)
    rows = [
        {"name": s.tags.get(NAME_TAG), "snapshot_id": s.id, "time": s.time, **s.meta.get("package", {})}
        for s in found
    ]

    def human(c: Console) -> None:
        from rich.table import Table

        table = Table("name", "created", "dataset", "models", "commit", "size", "snapshot")
        for row in rows:
            table.add_row(plain(row["name"]), row.get("created", ""), plain(row.get("dataset", {}).get("version", "")),
                          plain(", ".join(m["name"] for m in row.get("models", []))),
                          row.get("code", {}).get("commit", "")[:12], human_bytes(row.get("bytes", 0)),
                          row["snapshot_id"][:8])  # fmt: skip
        c.print(table)

    app.out.emit(rows, human)


@repro.command()
@click.argument("package")
@pass_app
def verify(app: AppContext, package: str) -> int:
    """Check every checksum of PACKAGE.tar.gz (a file) or of the recorded package NAME."""
    from coldkeep.repro.package import find_package
    from coldkeep.repro.verify import verify_archive, verify_recorded

    if Path(package).is_file():
        result = verify_archive(Path(package))
    else:
        with open_repo(app) as repo:
            result = verify_recorded(repo, find_package(repo, package))

    def human(c: Console) -> None:
        for path, kind, detail in result.problems:
            c.print(plain(f"{kind}: {path}: {detail}"))
        c.print(
            f"package {plain(result.what)}: {result.files} files; "
            + ("OK" if result.ok else f"{len(result.failing())} FAILED")
        )

    app.out.emit(result.to_json(), human)
    if not result.ok:
        failing = result.failing()
        app.out.failure(IntegrityError(f"package {result.what}: {len(failing)} file(s) failed verification: "
                                       + ", ".join(plain(p) for p in failing[:20])))  # fmt: skip
        return EXIT_INTEGRITY
    return 0


@repro.command()
@click.argument("name")
@click.option("--to", "target", required=True, metavar="DIR", help="a new or empty directory")
@pass_app
def restore(app: AppContext, name: str, target: str) -> None:
    """Restore the recorded package NAME into DIR and unpack its dataset and models there."""
    from coldkeep.repro.package import find_package
    from coldkeep.repro.verify import restore_package

    with open_repo(app) as repo:
        result = restore_package(repo, find_package(repo, name), target)
    app.out.emit(result, lambda c: c.print(
        f"package {plain(result['package'])} restored into {plain(result['target'])}: {result['files']} files; "
        f"unpacked {', '.join(plain(k) for k in result['unpacked'])}"))  # fmt: skip
