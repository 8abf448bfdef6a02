"""``coldkeep drill``: a disaster-recovery drill with measured RTO and RPO (:mod:`coldkeep.ops.drill`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coldkeep.cli.context import AppContext, pass_app
from coldkeep.cli.output import plain
from coldkeep.cli.recorded import recorded
from coldkeep.cli.repo_support import open_repo
from coldkeep.errors import EXIT_INTEGRITY, EXIT_OVER_OBJECTIVE, IntegrityError
from coldkeep.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console


@click.command()
@click.option("--scenario", type=click.Choice(["database", "checkpoint", "dataset", "conversations", "full"]),
              default="database", show_default=True,
              help="what to recover; full: every scenario, as after losing the whole machine")  # fmt: skip
@click.option("--from-copy", "copy_name", default=None, metavar="NAME",
              help="recover from the repository copy NAME alone, as a replacement machine would")  # fmt: skip
@click.option("--no-live", is_flag=True,
              help="do not query the live server (no restore point: recover the whole archive)")  # fmt: skip
@click.option("--scratch", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="directory for the scratch copy (default: the system temp directory)")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="seed of the random choices (archived checkpoint, older dataset version, session); "
                   "default: a new one, recorded in the result")  # fmt: skip
@pass_app
@recorded("drill", target=lambda kw: str(kw.get("scenario", "")))
def drill(
    app: AppContext,
    scenario: str,
    copy_name: str | None,
    no_live: bool,
    scratch: Path | None,
    seed: int | None,
) -> int:
    """Recover into a scratch instance as after a disaster, check it, and time every step.

    \b
    database: the newest base backup plus all archived and streamed WAL, on a private port (the
    live server and its archive are never touched), recovered to a restore point the drill
    creates on the live server (when it answers); pg_amcheck, row counts against the live
    server's at that point, [postgres] check_sql; the RPO achieved, MB/s and the RTO projected
    at the database's size.  Exit 0 passed, 3 a check failed, 7 passed but the measured or
    projected RTO exceeds [drill] rto_objective (default 1h).
    """
    from coldkeep.ops.drill import run_drill
    from coldkeep.repository.setup import open_repository_section

    config = app.config()
    if copy_name:
        from coldkeep.ops.drill import copy_repository

        opened = open_repository_section(copy_repository(config, copy_name))
    else:
        opened = open_repo(app)
    with opened as repo:
        result = run_drill(config, repo, scenario=scenario, copy_name=copy_name, scratch=scratch,
                           rto_objective_s=config.drill.rto_objective_s, live=not no_live, seed=seed)  # fmt: skip

    def human(c: Console) -> None:
        c.print(f"drill {scenario} from the {result.source}: [bold]{result.verdict}[/bold] in {result.total_s} s "
                f"(objective {config.drill.rto_objective}; seed {result.seed})")  # fmt: skip
        _print_result(c, result.to_json(), "  ")
        for name, sub in result.scenarios.items():
            c.print(f"  {name}: [bold]{sub['verdict']}[/bold] in {sub['total_s']} s")
            _print_result(c, sub, "    ")

    app.out.emit(result.to_json(), human)
    if not result.ok:
        bad = next(ch for ch in result.checks if not ch["ok"]) if result.checks else None
        hint = (
            "[postgres] dsn must name the primary, as a user that may create restore points, and its WAL "
            "must reach the repository (`coldkeep pg check`)"
            if bad and bad["name"].endswith("mark")
            else "each check above names what failed; `coldkeep repo check --read-data` tells damaged "
            "data from a problem of this machine"
        )
        app.out.failure(
            IntegrityError(
                f"drill failed: {bad['name']}: {bad['detail']}" if bad else "drill failed", hint=hint
            )
        )
        return EXIT_INTEGRITY
    if result.verdict == "over-objective":
        return EXIT_OVER_OBJECTIVE
    return 0


def _print_result(c: Console, result: dict[str, Any], indent: str) -> None:
    """One scenario's steps, throughput, projection, RPO and checks (``full``: its own checks are
    the scenarios' checks, shown under each scenario instead)."""
    if result["skipped"]:
        c.print(f"{indent}skipped: {plain(result['skipped'])}")
        return
    for step, seconds in result["steps"].items():
        c.print(f"{indent}{step:<13} {seconds:>8.2f} s")
    projection = result["projection"]
    if result["files_mb_s"]:
        c.print(f"{indent}restored {human_bytes(result['bytes'])} at {result['files_mb_s']} MB/s "
                f"(1 TB in one hour needs {projection['one_tb_in_an_hour_mb_s']} MB/s)")  # fmt: skip
    sized = next(
        (k for k in ("database_bytes", "checkpoint_bytes", "dataset_bytes") if k in projection), None
    )
    if sized:
        c.print(
            f"{indent}projected RTO at {human_bytes(projection[sized])}: {projection['projected_rto_s']} s"
        )
    elif "projected_rto_s" in projection:
        c.print(f"{indent}projected RTO: {projection['projected_rto_s']} s")
    if result["rpo_s"] is not None:
        c.print(f"{indent}RPO {result['rpo_s']} s (recovered until {result['recovered_until']})")
    for role, what in result["recovered"].items():
        shown = ", ".join(
            f"{k} {str(v)[:12] if k == 'snapshot' else v}" for k, v in what.items() if k != "load_check_s"
        )
        c.print(f"{indent}{role}: {plain(shown)}")
    if result["scenarios"]:
        return
    for check in result["checks"]:
        mark = "[green]ok[/green]" if check["ok"] else "[red]FAILED[/red]"
        c.print(f"{indent}{mark} {plain(check['name'])}: {plain(check['detail'])}")
