"""``coldkeep datasets …`` — immutable, deduplicated dataset versions (the spec's dataset snapshots).

Exit codes: 0 ok (``status``: also when the tree changed; ``--exit-code`` makes that 1);
1 failed (a version name taken by other content, a file changed while read); 2 usage/config;
3 integrity (``verify`` found failing files, ``export``/``restore`` met damaged data); 4 lock held;
5 not found (version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import open_repo, progress
from coldkeep.errors import EXIT_INTEGRITY, IntegrityError, SourceChanged
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from coldkeep.datasets.manifest import Diff


def _root(app: AppContext, root: str | None) -> str:
    return root if root is not None else app.config().datasets.root


@click.group()
def datasets() -> None:
    """Dataset versions: snapshot, status, list, show, diff, verify, restore, export.

    \b
    Exit codes: 0 ok, 1 failed (version name taken by other content, a file changed while
    read), 2 usage/config, 3 integrity (failing files, damaged data), 4 lock held, 5 not found.
    """


@datasets.command()
@click.option("--version", "version", required=True, help="the version name, e.g. v3.0 (immutable)")
@click.option("--root", default=None, metavar="DIR", help="the dataset tree (default [datasets].root)")
@click.option("--label", default="", help="free text stored with the version")
@click.option(
    "--if-changed",
    is_flag=True,
    help="if this content is recorded under any version, return that one instead of a new version",
)
@pass_app
@recorded("datasets snapshot")
def snapshot(app: AppContext, version: str, root: str | None, label: str, if_changed: bool) -> None:
    """Record the dataset tree as VERSION (strict: a file changing while read fails it).

    The same content again under the same name is a no-op that returns the existing version;
    other content under a taken name is refused, both content hashes named.
    """
    from coldkeep.datasets.snapshot import snapshot_dataset

    config = app.config().datasets
    with open_repo(app) as repo, progress(app, "dataset snapshot") as prog:
        try:
            outcome = snapshot_dataset(repo, _root(app, root), version, splits=config.splits, label=label,
                                       if_changed=if_changed, progress=prog)  # fmt: skip
        except SourceChanged as exc:
            for warning in exc.warnings:
                app.out.warn(warning)
            raise
    m = outcome.version.manifest

    def human(c: Console) -> None:
        what = "recorded" if outcome.created else f"already recorded ({outcome.reason})"
        c.print(f"dataset {plain(outcome.version.name)} {what}: snapshot {outcome.version.snapshot.short_id}, "
                f"{m['files']} files, {m['total_apps']} apps, {human_bytes(m['total_size_bytes'])}, "
                f"content {m['content_sha256']}")  # fmt: skip
        if outcome.backup is not None:
            c.print(
                f"new stored: {human_bytes(outcome.backup.new_stored_bytes)} in {outcome.backup.duration_s:.2f} s"
            )

    app.out.emit(outcome.to_json(), human)


@datasets.command("list")
@pass_app
def list_(app: AppContext) -> None:
    """Every recorded version, oldest first."""
    from coldkeep.datasets.versions import versions

    with open_repo(app) as repo:
        found = versions(repo)

    def human(c: Console) -> None:
        from rich.table import Table

        table = Table("version", "date", "files", "apps", "size", "content", "snapshot", "label")
        for v in found:
            m = v.manifest
            table.add_row(plain(v.name), m["snapshot_date"], str(m["files"]), str(m["total_apps"]),
                          human_bytes(m["total_size_bytes"]), m["content_sha256"][:16], v.snapshot.short_id,
                          plain(v.snapshot.label))  # fmt: skip
        c.print(table)

    app.out.emit([v.to_json() for v in found], human)


@datasets.command()
@click.argument("version")
@click.option("--checksums", is_flag=True, help="print the per-file SHA-256 list (sha256sum format) instead")
@pass_app
def show(app: AppContext, version: str, checksums: bool) -> None:
    """The manifest of VERSION (`latest`: the newest)."""
    import sys

    from coldkeep.cli.output import dumps
    from coldkeep.datasets.manifest import checksum_list
    from coldkeep.datasets.versions import find_version

    with open_repo(app) as repo:
        found = find_version(repo, version)
        sums = checksum_list(found.entries(repo)) if checksums else b""
    if checksums:
        sys.stdout.flush()
        sys.stdout.buffer.write(sums)
        sys.stdout.buffer.flush()
        return

    def human(c: Console) -> None:
        c.print(f"dataset {plain(found.name)}: snapshot {found.snapshot.short_id} of {plain(found.root)}"
                + (f", label {plain(found.snapshot.label)}" if found.snapshot.label else ""))  # fmt: skip
        for line in dumps(found.manifest, indent=2).splitlines():
            c.print(plain(line))

    app.out.emit(found.to_json(), human)


def _render_diff(c: Console, d: Diff, title: str) -> None:
    c.print(title)
    for label, paths, mark in (
        ("added", d.added, "+"),
        ("removed", d.removed, "-"),
        ("changed", d.changed, "~"),
    ):
        for path in paths:
            old, new = d.sizes.get(path, (None, None))
            size = f"{human_bytes(old) if old is not None else '-'} -> {human_bytes(new) if new is not None else '-'}"
            c.print(f"  {mark} {label:8} {plain(path)}  ({size})")
    for label, apps in (("added", d.apps_added), ("removed", d.apps_removed), ("changed", d.apps_changed)):
        if apps:
            c.print(f"apps {label}: {', '.join(plain(a) for a in apps)}")
    c.print(f"files: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed; "
            f"size {human_bytes(d.old_bytes)} -> {human_bytes(d.new_bytes)}")  # fmt: skip


@datasets.command()
@click.argument("old")
@click.argument("new")
@pass_app
def diff(app: AppContext, old: str, new: str) -> None:
    """Files and apps added, removed and changed from version OLD to NEW, with sizes."""
    from coldkeep.datasets.check import diff_versions
    from coldkeep.datasets.versions import find_version, versions

    with open_repo(app) as repo:
        known = versions(repo)
        a, b = find_version(repo, old, known=known), find_version(repo, new, known=known)
        d = diff_versions(repo, a, b)
    app.out.emit({"old": a.name, "new": b.name, **d.to_json()},
                 lambda c: _render_diff(c, d, f"{plain(a.name)} -> {plain(b.name)}"))  # fmt: skip


@datasets.command()
@click.argument("version", required=False)
@click.option("--root", default=None, metavar="DIR", help="the live tree (default [datasets].root)")
@click.option("--exit-code", is_flag=True, help="exit 1 when the tree differs from the version")
@pass_app
def status(app: AppContext, version: str | None, root: str | None, exit_code: bool) -> int:
    """The live tree against VERSION (default: the newest), like `git status`.

    Files whose size and modification time match are judged unchanged without being read.
    """
    from coldkeep.datasets.snapshot import dataset_root, scan
    from coldkeep.datasets.versions import find_version

    path = dataset_root(_root(app, root))
    with open_repo(app) as repo:
        found = find_version(repo, version)
        result = scan(found, found.entries(repo), path)
    for warning in result.warnings:
        app.out.warn(warning)

    def human(c: Console) -> None:
        if result.clean:
            c.print(f"{plain(path)}: same content as dataset {plain(found.name)} "
                    f"({result.by_stat} files by stat, {result.hashed} read)")  # fmt: skip
        else:
            _render_diff(c, result.diff, f"{plain(path)} against dataset {plain(found.name)}:")

    app.out.emit(result.to_json(), human)
    return 1 if exit_code and not result.clean else 0


@datasets.command()
@click.argument("version")
@click.option("--against", default=None, metavar="DIR", help="also compare the tree in DIR with the version")
@pass_app
def verify(app: AppContext, version: str, against: str | None) -> int:
    """Re-read every stored byte of VERSION (and DIR) and name every file that fails."""
    from coldkeep.datasets.check import verify_version
    from coldkeep.datasets.versions import find_version

    with open_repo(app) as repo:
        result = verify_version(repo, find_version(repo, version), against)

    def human(c: Console) -> None:
        for p in result.problems:
            c.print(plain(p.line()))
        c.print(f"dataset {plain(result.version)}: {result.files} files, {human_bytes(result.bytes)} read; "
                + ("OK" if result.ok else f"{len(result.failing())} FAILED"))  # fmt: skip

    app.out.emit(result.to_json(), human)
    if not result.ok:
        failing = result.failing()
        shown = ", ".join(plain(p) for p in failing[:20]) + (
            f" (+{len(failing) - 20} more)" if len(failing) > 20 else ""
        )
        damaged = any(p.kind == "damaged" for p in result.problems)
        hint = (
            None
            if damaged
            else f"the tree in {against} is not this version; `coldkeep datasets restore` gives it back"
        )
        app.out.failure(
            IntegrityError(
                f"dataset {result.version}: {len(failing)} file(s) failed verification: {shown}", hint=hint
            )
        )
        return EXIT_INTEGRITY
    return 0


@datasets.command()
@click.argument("version")
@click.option("--to", "target", required=True, metavar="DIR", help="a new or empty directory")
@pass_app
def restore(app: AppContext, version: str, target: str) -> None:
    """Restore VERSION byte-exact into DIR, checked against its manifest."""
    from coldkeep.datasets.check import restore_version
    from coldkeep.datasets.versions import find_version

    if not target:
        raise click.BadParameter("an empty path", param_hint="--to")
    with open_repo(app) as repo, progress(app, "dataset restore") as prog:
        result = restore_version(repo, find_version(repo, version), target, progress=prog)
    app.out.emit(result.to_json(), lambda c: c.print(
        f"dataset {plain(result.version)} restored into {plain(result.target)}: {result.files} files, "
        f"{human_bytes(result.bytes)}, manifest checked"))  # fmt: skip


@datasets.command()
@click.argument("version")
@click.option("--format", "fmt", type=click.Choice(["tar.gz", "tar.zst"]), default=None,
              help="archive format (default [datasets].export_format)")  # fmt: skip
@click.option("--to", "to_dir", default=None, metavar="DIR", help="directory (default [datasets].export_dir)")
@click.option("--level", type=click.IntRange(min=1, max=19), default=None, help="compression level")
@pass_app
def export(app: AppContext, version: str, fmt: str | None, to_dir: str | None, level: int | None) -> None:
    """Write VERSION as the spec's {prefix}_{version}_{date}.tar.gz (+ .sha256), streamed from the
    repository, byte-identical every time; a damaged blob stops it (exit 3, no archive left)."""
    from coldkeep.datasets.export import export_version
    from coldkeep.datasets.versions import find_version

    config = app.config().datasets
    with open_repo(app) as repo, progress(app, "dataset export") as prog:
        found = find_version(repo, version)
        prog.bytes_total = int(found.manifest.get("total_size_bytes", 0))
        result = export_version(repo, found, to_dir or config.export_dir, fmt=fmt or config.export_format,
                                prefix=config.export_prefix, level=level,
                                on_file=lambda n: prog.add(1, n))  # fmt: skip
    app.out.emit(result.to_json(), lambda c: c.print(
        f"dataset {plain(result.version)} exported: {plain(result.path)} ({human_bytes(result.bytes)}, "
        f"{result.files} files), sha256 {result.sha256}"))  # fmt: skip
