"""The ``coldkeep`` command: global options, lazy command groups, error → exit code.

Command modules are imported only when their command runs.  The executable is
:mod:`coldkeep.cli.entry`, which runs the per-segment ``pg wal-push`` / ``pg wal-fetch`` before
this module (and click) is imported; they reach click only for ``--help`` and command lines the
lean parser leaves alone (:mod:`coldkeep.cli.pg_wal_cmd`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from coldkeep import __version__
from coldkeep.cli.context import AppContext
from coldkeep.cli.output import Output
from coldkeep.errors import EXIT_FAILED, EXIT_USAGE, RESTORE_COMMAND_FATAL, ColdkeepError, UsageError

#: command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "init": "coldkeep.cli.init_cmd:init",
    "config": "coldkeep.cli.config_cmd:config",
    "doctor": "coldkeep.cli.doctor_cmd:doctor",
    "repo": "coldkeep.cli.repo_cmd:repo",
    "backup": "coldkeep.cli.files_cmd:backup",
    "snapshots": "coldkeep.cli.files_cmd:snapshots",
    "restore": "coldkeep.cli.files_cmd:restore",
    "forget": "coldkeep.cli.files_cmd:forget",
    "conversations": "coldkeep.cli.conversations_cmd:conversations",
    "checkpoints": "coldkeep.cli.checkpoints_cmd:checkpoints",
    "datasets": "coldkeep.cli.datasets_cmd:datasets",
    "pg": "coldkeep.cli.pg_cmd:pg",
    "repro": "coldkeep.cli.repro_cmd:repro",
    "drill": "coldkeep.cli.drill_cmd:drill",
    "runs": "coldkeep.cli.runs_cmd:runs",
    "exporter": "coldkeep.cli.monitor_cmd:exporter",
    "alerts": "coldkeep.cli.monitor_cmd:alerts",
    "metrics": "coldkeep.cli.monitor_cmd:metrics",
    "schedule": "coldkeep.cli.schedule_cmd:schedule",
    "run-due": "coldkeep.cli.schedule_cmd:run_due",
    "status": "coldkeep.cli.status_cmd:status",
    "report": "coldkeep.cli.status_cmd:report",
    "storage": "coldkeep.cli.storage_cmd:storage",
    "tiers": "coldkeep.cli.tiers_cmd:tiers",
}


def _app(ctx: click.Context) -> AppContext | None:
    return ctx.find_object(AppContext)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    app = _app(ctx)
    if value and app is not None:
        app.out.json = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    app = _app(ctx)
    if value and app is not None:
        app.out.quiet = True


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    app = _app(ctx)
    if value and app is not None:
        app.out.verbose += value
        _setup_logging(app.out.verbose)


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    app = _app(ctx)
    if value is None or app is None:
        return
    if app.config_path is not None and os.path.realpath(app.config_path) != os.path.realpath(value):
        raise click.BadParameter(f"given twice ({app.config_path} and {value})", param_hint="--config")
    app.config_path = value


#: the global options, as accepted after a subcommand too (``coldkeep repo stats --json``)
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--json",), {"is_flag": True, "callback": _set_json}),
    (("-q", "--quiet"), {"is_flag": True, "callback": _set_quiet}),
    (("-v", "--verbose"), {"count": True, "callback": _set_verbose}),
    (("--config",), {"metavar": "FILE", "callback": _set_config}),
)


def _accept_global_options(command: click.Command) -> click.Command:
    """Give ``command`` (and, for a group, every command under it) the global options as hidden,
    eager options, unless it has an option of that name itself.  Done once per command object."""
    if getattr(command, "_coldkeep_globals", False):
        return command
    taken = {
        opt
        for param in command.params
        for opt in getattr(param, "opts", ()) + getattr(param, "secondary_opts", ())
    }
    for decls, attrs in _GLOBAL_OPTIONS:
        if taken.isdisjoint(decls):
            name = "global_" + decls[-1].lstrip("-")
            command.params.append(
                click.Option([name, *decls], hidden=True, expose_value=False, is_eager=True, **attrs)
            )
    command._coldkeep_globals = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_global_options(sub)
    return command


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return _accept_global_options(command)
        return super().get_command(ctx, cmd_name)


_state = Output()


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="config file (else $COLDKEEP_CONFIG, ./coldkeep.toml, /etc/coldkeep/coldkeep.toml)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.option("-q", "--quiet", is_flag=True, help="print nothing but errors")
@click.option("-v", "--verbose", count=True, help="more detail; tracebacks on errors")
@click.version_option(__version__, prog_name="coldkeep")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, as_json: bool, quiet: bool, verbose: int) -> None:
    """coldkeep — backups, archives and recovery for an ML research lab.

    \b
    Exit codes: 0 ok, 1 operation failed, 2 usage or config error, 3 integrity failure,
    4 lock held by another process, 5 not found, 6 backup written but some files changed while
    read or could not be read, 7 a drill passed but over its recovery time objective.  `pg wal-fetch` (restore_command) exits 1
    only for "segment not archived" and 126 for every other failure.

    The global options work after the subcommand too (`coldkeep repo stats --json`).
    """
    _state.json, _state.quiet, _state.verbose = as_json, quiet, verbose
    ctx.obj = AppContext(config_path=config_path, out=_state)


def _early_flags(argv: list[str]) -> None:
    """Know --json / -v even when parsing failed before the group callback ran."""
    for arg in argv:
        if arg == "--":
            break
        if arg == "--json":
            _state.json = True
        elif arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            _state.verbose += 1


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "warning" if record.levelno >= logging.WARNING else record.levelname.lower()
        return f"{level}: {record.getMessage()}"


_log_handler: logging.Handler | None = None


def _setup_logging(verbose: int) -> None:
    """coldkeep's log records as ``warning: …`` lines on stderr (``info``/``debug`` with -v/-vv).

    Without a handler Python prints bare WARNING messages through its last-resort handler,
    which breaks the one ``error:`` + one ``hint:`` line contract.
    """
    global _log_handler
    logger = logging.getLogger("coldkeep")
    if _log_handler is not None:
        logger.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(_LogFormatter())
    logger.addHandler(_log_handler)
    logger.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


def run(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _state.json, _state.quiet, _state.verbose = False, False, 0
    _early_flags(args)  # the group callback replaces these with the parsed values
    early_json = _state.json
    _setup_logging(_state.verbose)
    try:
        result = cli.main(args=args, prog_name="coldkeep", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        return 130
    except click.ClickException as exc:
        # a command line that did not parse may not have reached its --json (after the
        # subcommand, it is read with the subcommand's options): as _early_flags saw it
        _state.json = _state.json or early_json
        _state.error(
            UsageError(exc.format_message(), hint="see `coldkeep --help` or `coldkeep COMMAND --help`")
        )
        return _wal_fetch_fatal(args, EXIT_USAGE)
    except ColdkeepError as exc:
        if _state.verbose:
            traceback.print_exc()
        _state.error(exc)
        return _wal_fetch_fatal(args, exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # last resort: one line, no traceback unless -v
        if _state.verbose:
            traceback.print_exc()
        err = ColdkeepError(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="rerun with -v for the traceback and report it",
        )
        _state.error(err)
        return _wal_fetch_fatal(args, EXIT_FAILED)


def _wal_fetch_fatal(args: list[str], code: int) -> int:
    """``pg wal-fetch`` is PostgreSQL's restore_command: any failure but "not archived" is >= 126."""
    if "wal-fetch" not in args or code > 125:
        return code
    from coldkeep.lean import wal_command_name

    return RESTORE_COMMAND_FATAL if wal_command_name(args) == "wal-fetch" else code


def main() -> None:
    sys.exit(run())
