"""``coldkeep checkpoints …`` — model checkpoints: list, back up, archive, recover, verify,
promote, roll back, history, export.

Exit codes: 0 ok; 1 failed (a checkpoint changed while it was stored, a load check failed); 2 usage
or config; 3 integrity (a stored copy does not verify: nothing was removed or restored from it);
4 another checkpoints run holds the root; 5 not found.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from coldkeep.checkpoints.naming import TYPES
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.units import human_bytes


def _service(app: AppContext) -> Any:
    from coldkeep.checkpoints import Service

    return Service(app.config(), log=app.out.info)


def _outcome(app: AppContext, result: Any, title: str) -> int:
    """Print a backup/archive outcome: one line per checkpoint with its reason."""
    data = result.to_json()

    def human(c: Console) -> None:
        if data["checkpoints"]:
            c.print(title)
        width = max((len(item["name"]) for item in data["checkpoints"]), default=0)
        for item in data["checkpoints"]:  # one line each, names never cut (a table cuts them at 80 columns)
            c.print(
                f"  {plain(item['name']):<{width}}  {item['action']}: {plain(item['reason'])}", soft_wrap=True
            )
        c.print(f"{data['hot']} hot checkpoint(s), {data['already_stored']} already in the repository")

    app.out.emit(data, human)
    for problem in data["problems"]:
        app.out.warn(problem)
    return int(data["exit_code"])


@click.group()
def checkpoints() -> None:
    """Model checkpoints under [checkpoints].root (cet-d-{phase}/{type}-{YYYYmmdd_HHMMSS}).

    \b
    Exit codes: 0 ok, 1 failed, 2 usage/config, 3 a stored copy does not verify (nothing removed),
    4 another checkpoints run holds the root, 5 not found.
    """


@checkpoints.command("list")
@click.option("--phase", default=None, help="only this phase (e.g. phase3)")
@click.option("--type", "type_", type=click.Choice(TYPES), default=None, help="only this type")
@pass_app
def list_(app: AppContext, phase: str | None, type_: str | None) -> None:
    """Every checkpoint, hot or archived: where it is, complete?, verified?, when it is due and why."""
    with _service(app) as svc:
        data = svc.list(phase=phase, type_=type_)

    def human(c: Console) -> None:
        # one line per checkpoint, names never cut (a table cuts them at 80 columns); --json has it all
        rows = data["checkpoints"]
        width = max((len(row["name"]) for row in rows), default=0)
        for row in rows:
            state = [
                {None: "", True: "complete", False: "INCOMPLETE"}[row["complete"]],
                "verified" if row["verified"] else "not verified",
            ]
            due = f"due {row['due'][:10]}, " if row["due"] and "due" not in row["reason"] else ""
            c.print(f"{plain(row['name']):<{width}}  {human_bytes(row['size']):>9}  {row['where']:<10}  "
                    f"{', '.join(s for s in state if s)}  ({due}{plain(row['reason'])})", soft_wrap=True)  # fmt: skip
        if not rows:
            c.print("no checkpoints")
        for item in data["unrecognised"]:
            c.print(
                f"[yellow]unrecognised[/yellow] {plain(item['path'])}: {plain(item['reason'])} (left alone)"
            )
        for path in data["leftovers"]:
            c.print(f"[yellow]interrupted[/yellow] {plain(path)} ({_finisher(path)})")

    app.out.emit(data, human)


def _finisher(path: str) -> str:
    """Which command finishes what an interrupted run left at ``path``."""
    base = path.rsplit("/", 1)[-1]
    if base.startswith(".coldkeep-archiving-"):
        return "the next `checkpoints archive` finishes it"
    if base.startswith(".coldkeep-promote-"):
        return "the next `checkpoints promote`, `rollback` or `history` finishes it"
    if base.startswith(".coldkeep-recover-"):
        return "the next `checkpoints recover` of that checkpoint removes it"
    return "left by an interrupted coldkeep run; safe to remove when none runs"


@checkpoints.command()
@pass_app
@recorded("checkpoints backup")
def backup(app: AppContext) -> int:
    """Store every complete hot checkpoint not yet in the repository (one strict snapshot each)."""
    from coldkeep.checkpoints.store import backup as run

    with _service(app) as svc:
        return _outcome(app, run(svc), "checkpoints backup")


@checkpoints.command()
@click.option("--dry-run", is_flag=True, help="print every decision; store and remove nothing")
@pass_app
@recorded("checkpoints archive")
def archive(app: AppContext, dry_run: bool) -> int:
    """Archive due hot checkpoints: store, verify the stored copy against the hot files, remove."""
    from coldkeep.checkpoints.store import archive as run

    with _service(app) as svc:
        return _outcome(
            app, run(svc, dry_run=dry_run), "checkpoints archive" + (" (dry run)" if dry_run else "")
        )


def _at(text: str | None) -> Any:
    if text is None:
        return None
    from coldkeep import clock

    return clock.parse_timestamp(text, require_offset=False)


def _load_check_failed(app: AppContext, name: str, check: dict[str, Any] | None) -> None:
    """The ``error:``/``hint:`` lines of a failed load check (the result was emitted already)."""
    if check is not None and not check["ok"]:
        from coldkeep.errors import CheckpointError

        why = "timed out" if check["exit_code"] is None else f"exited {check['exit_code']}"
        app.out.failure(CheckpointError(f"{name}: the load check {why}",
                                        hint="see its output above (or in load_check.output with --json)"))  # fmt: skip


def _load_check_line(c: Console, check: dict[str, Any] | None) -> None:
    if check is None:
        return
    verdict = "[green]passed[/green]" if check["ok"] else f"[red]FAILED[/red] (exit {check['exit_code']})"
    c.print(f"load check {verdict} in {check['duration_s']:.1f} s")
    if not check["ok"] and check["output"]:
        c.print(plain(check["output"].strip()))


@checkpoints.command()
@click.argument("name")
@click.option("--to", "to", default=None, metavar="DIR", help="restore into DIR (default: its hot path)")
@click.option(
    "--at", "at", default=None, metavar="TIME", help="with cet-d-PHASE-TYPE: the one in place at TIME"
)
@pass_app
def recover(app: AppContext, name: str, to: str | None, at: str | None) -> int:
    """Restore a checkpoint by name, verify every file, run the load check, print the time taken.

    \b
    NAME: cet-d-phase3/best-20251015_092000 (exact), cet-d-phase3-best (the newest best of phase
    3), cet-d-phase4-production --at TIME (what was in production then), or a snapshot id.
    """
    from coldkeep.checkpoints.recover import recover as run

    with _service(app) as svc:
        result = run(svc, name, to=to, at=_at(at))
    data = result.to_json()

    def human(c: Console) -> None:
        c.print(
            f"{data['action']} {plain(data['name'])} (snapshot {data['snapshot'][:8]}) at {plain(data['target'])}: "
            f"{data['files']} files, {human_bytes(data['bytes'])}, verified, in {data['duration_s']:.1f} s"
        )
        _load_check_line(c, data["load_check"])

    app.out.emit(data, human)
    _load_check_failed(app, data["name"], data["load_check"])
    return result.exit_code


@checkpoints.command()
@click.argument("name")
@click.option("--deep", is_flag=True, help="also read every tensor and report NaN/Inf by name")
@pass_app
def verify(app: AppContext, name: str, deep: bool) -> int:
    """Verify a stored checkpoint: every byte (against the hot copy too), safetensors structure."""
    from coldkeep.checkpoints.recover import verify as run

    with _service(app) as svc:
        result = run(svc, name, deep=deep)
    data = result.to_json()

    def human(c: Console) -> None:
        against = f" against {plain(data['against'])}" if data["against"] else ""
        verdict = "[green]ok[/green]" if data["ok"] else f"[red]{len(data['problems'])} problem(s)[/red]"
        c.print(f"{plain(data['name'])} (snapshot {data['snapshot'][:8]}){against}: {data['files']} files, "
                f"{human_bytes(data['bytes'])}, {data['tensors']} tensors: {verdict}")  # fmt: skip
        for problem in data["problems"]:
            c.print(f"  {plain(problem)}")
        for note in data["notes"]:
            c.print(f"  note: {plain(note)}")
        _load_check_line(c, data["load_check"])

    app.out.emit(data, human)
    if data["problems"]:
        from coldkeep.errors import CheckpointDamaged

        app.out.failure(CheckpointDamaged(f"{data['name']}: {data['problems'][0]}"))
    else:
        _load_check_failed(app, data["name"], data["load_check"])
    return result.exit_code


def _event_line(c: Console, e: dict[str, Any]) -> None:
    demoted = f"; {e['demote_from']} -> {e['demote_to']}" if e.get("demote_from") else ""
    reason = f" ({e['reason']})" if e.get("reason") else ""
    c.print(plain(f"{e['time']} {e['action']} by {e['who']}: {e['from']} -> {e['to']}{demoted}{reason}"
                  + ("" if e.get("state") == "done" else f" [{e.get('state')}]")))  # fmt: skip


@checkpoints.command()
@click.argument("name")
@click.option("--reason", default="", metavar="TEXT", help="why (kept in the history)")
@pass_app
def promote(app: AppContext, name: str, reason: str) -> None:
    """Make NAME the production checkpoint of its phase (production-{now}, hard links); the
    current production becomes rollback-{now}."""
    from coldkeep.checkpoints.promote import promote as run

    with _service(app) as svc:
        event = run(svc, name, reason)
    app.out.emit(event, lambda c: _event_line(c, event))


@checkpoints.command()
@click.argument("phase")
@click.option("--reason", default="", metavar="TEXT", help="why (kept in the history)")
@pass_app
def rollback(app: AppContext, phase: str, reason: str) -> None:
    """Make the most recently demoted production of PHASE the production again."""
    from coldkeep.checkpoints.promote import rollback as run

    with _service(app) as svc:
        event = run(svc, phase, reason)
    app.out.emit(event, lambda c: _event_line(c, event))


@checkpoints.command()
@click.option("--phase", default=None, help="only this phase")
@pass_app
def history(app: AppContext, phase: str | None) -> None:
    """Every promotion and rollback: who, when, from, to, reason."""
    from coldkeep.checkpoints.promote import history as run

    with _service(app) as svc:
        events = run(svc, phase.removeprefix("cet-d-") if phase else None)

    def human(c: Console) -> None:
        for e in events:
            _event_line(c, e)
        if not events:
            c.print("no promotions yet")

    app.out.emit({"events": events}, human)


@checkpoints.command()
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["tar.zst", "tar.gz"]), default="tar.zst", show_default=True
)
@click.option("--to", "to", default=".", metavar="DIR", help="write the archive and its .sha256 here")
@pass_app
def export(app: AppContext, name: str, fmt: str, to: str) -> None:
    """A standalone archive of a stored checkpoint, and a .sha256 for `sha256sum -c`."""
    from coldkeep.checkpoints.export import export as run

    with _service(app) as svc:
        result = run(svc, name, fmt=fmt, to=to)
    data = result.to_json()
    app.out.emit(data, lambda c: c.print(
        f"{plain(data['archive'])}: {data['files']} files, {human_bytes(data['bytes'])}; checksum in "
        f"{plain(data['checksum_file'])}"))  # fmt: skip
