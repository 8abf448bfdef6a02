"""Every error coldkeep shows a user.

One root (:class:`ColdkeepError`), one base per subsystem, and user-facing classes that carry a
message template, a hint and an exit code (the pattern of borg's ``helpers/errors.py`` and pip's
``DiagnosticPipError``).  The CLI prints ``error: <message>`` and ``hint: <hint>`` on one line each
and exits with :attr:`exit_code`; a traceback appears only with ``-v``.

Exit codes (documented in the README and docs/design.md):

====  ==========================================================
0     ok
1     operation failed
2     usage or configuration error
3     integrity / verification failure
4     lock held by another process (or this run's own lock was lost)
5     not found
6     snapshot written, but some files changed while they were read or could not be read
      (``backup``: the snapshot holds exactly the bytes read; ``backup --strict`` refuses instead)
====  ==========================================================

``coldkeep pg wal-fetch`` (PostgreSQL's ``restore_command``) is the one documented exception: it
exits 1 only when the segment is not in the archive and :data:`RESTORE_COMMAND_FATAL` (>= 126) on
anything else, because PostgreSQL takes exit codes <= 125 as "missing file" and ends recovery.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_LOCKED = 4
EXIT_NOT_FOUND = 5
#: ``backup`` wrote its snapshot, but some files changed while they were read or could not be read:
#: not 0 (so cron and CI notice), not 3 (nothing stored is damaged: the snapshot restores)
EXIT_PARTIAL = 6
#: ``drill``: every check passed, but the measured or projected recovery time exceeds the objective
EXIT_OVER_OBJECTIVE = 7
#: exit code of ``restore_command`` for anything but "segment not archived" (PostgreSQL: > 125).
RESTORE_COMMAND_FATAL = 126


class ColdkeepError(Exception):
    """Root of every error coldkeep raises on purpose.

    Subclasses set ``template`` (``str.format`` fields filled from keyword arguments), ``hint``
    and ``exit_code``.  ``ColdkeepError("free text")`` also works for one-off messages.
    """

    template: ClassVar[str] = "{detail}"
    hint: str = ""
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, detail: str = "", *, hint: str | None = None, **fields: Any) -> None:
        self.fields = dict(fields, detail=detail)
        try:
            message = self.template.format(**self.fields)
        except (KeyError, IndexError):  # a template field was not supplied: show what we have
            message = detail if detail else f"{self.template} {fields}"
        # one line, always: a newline inside a path or a server message must not break the format
        self.message = " ".join(message.split("\n")).strip()
        if hint is not None:
            self.hint = hint
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


# --- usage and configuration (exit 2) -----------------------------------------------------------


class UsageError(ColdkeepError):
    exit_code = EXIT_USAGE
    hint = "see `coldkeep COMMAND --help`"


class ConfigError(ColdkeepError):
    exit_code = EXIT_USAGE
    hint = "run `coldkeep config check` and fix the key it names"


class ConfigNotFound(ConfigError):
    template = "no configuration file found (looked at: {looked})"
    hint = "create one with `coldkeep init`, or pass --config FILE / set COLDKEEP_CONFIG"


class ConfigExists(ConfigError):
    template = "{path} already exists; refusing to overwrite it"
    hint = "edit it, or pass --config with a new path"


# --- not found (exit 5) -------------------------------------------------------------------------


class NotFound(ColdkeepError):
    exit_code = EXIT_NOT_FOUND
    hint = "list what exists with the matching list command (e.g. `coldkeep snapshots`)"


class NotArchived(NotFound):
    """A WAL file (segment or history file) is not in the archive: ``wal-fetch``'s exit 1."""

    template = "{detail} is not in the WAL archive"
    hint = (
        "check the archiver with `coldkeep pg check`; PostgreSQL asks for files past the end of the archive"
    )


# --- storage ------------------------------------------------------------------------------------


class StorageError(ColdkeepError):
    """A backend could not do what was asked (I/O error, endpoint down, permission)."""

    hint = "check that the repository location is reachable and writable (`coldkeep doctor`)"


class StorageUnavailable(StorageError):
    template = "storage unreachable: {detail}"
    hint = "is the endpoint up and are the credentials in the environment? (`coldkeep doctor`)"


class StorageFull(StorageError):
    template = "no space left on {detail}"
    hint = "free space or run `coldkeep forget` + `coldkeep repo prune`"


class ObjectNotFound(StorageError):
    exit_code = EXIT_NOT_FOUND
    template = "object not found: {detail}"
    hint = "run `coldkeep repo check` to see what the repository is missing"


class ObjectExists(StorageError):
    template = "object already exists and differs: {detail}"
    hint = "objects are write-once; this is refused so nothing is overwritten"


class InvalidKey(StorageError):
    exit_code = EXIT_USAGE
    template = "invalid storage key: {detail}"
    hint = "keys are relative, '/'-separated, without '..' or empty parts"


# --- repository ---------------------------------------------------------------------------------


class RepositoryError(ColdkeepError):
    hint = "run `coldkeep repo check` for details"


class RepositoryNotInitialised(RepositoryError):
    exit_code = EXIT_NOT_FOUND
    template = "no coldkeep repository at {detail}"
    hint = "create it with `coldkeep repo init`"


class RepositoryExists(RepositoryError):
    exit_code = EXIT_USAGE
    template = "a coldkeep repository already exists at {detail}"
    hint = "use it as it is, or choose another [repository].url"


class UnsupportedFormat(RepositoryError):
    exit_code = EXIT_USAGE
    template = "repository format version {found} is newer than this coldkeep understands ({supported})"
    hint = "upgrade coldkeep"


class WrongPassword(RepositoryError):
    exit_code = EXIT_USAGE
    template = "wrong passphrase for the repository at {detail}"
    hint = "set COLDKEEP_PASSWORD or [repository].password_file to a passphrase added with `repo key add`"


class IntegrityError(ColdkeepError):
    """Data failed a checksum, a manifest or a structural check."""

    exit_code = EXIT_INTEGRITY
    hint = "run `coldkeep repo check --read-data`; `coldkeep repo repair --from COPY` can fix damaged packs"


class RestoreTargetError(ColdkeepError):
    """A restore could not write into its target (no space, read-only, permission, file-size limit,
    a name too long, a file where a directory goes); every byte it read verified."""

    exit_code = EXIT_FAILED
    hint = (
        "the target refused the files (see the system error); the repository is not damaged: "
        "free space or fix permissions in {target}, or restore elsewhere, and run the restore again"
    )

    def __init__(self, detail: str = "", *, target: str, **fields: Any) -> None:
        super().__init__(detail, **fields)
        self.hint = type(self).hint.format(target=target)


class SourceChanged(ColdkeepError):
    """A strict backup refused its snapshot: files changed while they were read, or could not be
    read.  ``changed`` and ``skipped`` list them (file-system paths); nothing was recorded."""

    exit_code = EXIT_FAILED
    template = "no snapshot written: {detail}"
    hint = "back up again once the files are quiet, or without --strict to keep what could be read"

    def __init__(
        self,
        detail: str = "",
        *,
        changed: list[str],
        skipped: list[str],
        warnings: list[str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(detail, **fields)
        self.changed = list(changed)
        self.skipped = list(skipped)
        #: the backup's warnings (what happened to each file), for the CLI to print
        self.warnings = list(warnings or [])

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"changed_files": self.changed, "skipped_files": self.skipped}


class LockHeld(ColdkeepError):
    exit_code = EXIT_LOCKED
    template = "repository is locked by {detail}"
    hint = "wait for it to finish; if that process is gone, run `coldkeep repo unlock`"


class LockLost(ColdkeepError):
    """This run's own lock could not be kept: another process may treat it as stale."""

    exit_code = EXIT_LOCKED
    template = "lost the repository lock of {detail}; stopped before writing anything that depends on it"
    hint = (
        "check that the repository is reachable and that nobody ran `repo unlock --all`, then run "
        "the command again (data already stored is reused; `repo prune` removes the rest)"
    )


class StateConflict(RepositoryError):
    template = "could not update {detail}: other writers kept changing it"
    hint = "run the command again"


# --- PostgreSQL ---------------------------------------------------------------------------------


class PostgresError(ColdkeepError):
    hint = "run `coldkeep doctor` to check the PostgreSQL settings"


class PostgresBinariesNotFound(PostgresError):
    template = "PostgreSQL server binaries not found ({detail})"
    hint = "install postgresql-15 or set [postgres].bin_dir"


class PostgresUnreachable(PostgresError):
    template = "cannot connect to PostgreSQL: {detail}"
    hint = "check [postgres].dsn and that the server runs (`coldkeep doctor`)"


# --- model checkpoints --------------------------------------------------------------------------


class CheckpointError(ColdkeepError):
    hint = "see `coldkeep checkpoints list` for every checkpoint, where it is and why"


class CheckpointNotFound(CheckpointError):
    exit_code = EXIT_NOT_FOUND
    template = "no checkpoint {detail}"
    hint = "list them with `coldkeep checkpoints list` (names look like cet-d-phase3/best-20251015_092000)"


class CheckpointDamaged(CheckpointError):
    """A stored checkpoint failed verification: its hot copy is kept, nothing is restored from it."""

    exit_code = EXIT_INTEGRITY
    hint = "the hot copy was left in place; run `coldkeep repo check --read-data` (and `repo repair --from COPY`)"


class CheckpointBusy(CheckpointError):
    exit_code = EXIT_LOCKED
    template = "another coldkeep checkpoints run holds {detail}"
    hint = "wait for it to finish, then run the command again"


# --- datasets and reproducibility packages ------------------------------------------------------


class VersionConflict(ColdkeepError):
    """A version name already recorded with another content (versions are immutable)."""

    template = (
        "dataset version {version} exists with content {existing}; the tree at {root} has content "
        "{found}: versions are immutable, nothing recorded"
    )
    hint = "snapshot it under a new version name (e.g. --version {version}.1), or `coldkeep datasets diff` to compare"

    def __init__(self, *, version: str, existing: str, found: str, root: str) -> None:
        super().__init__(version=version, existing=existing, found=found, root=root)
        self.hint = type(self).hint.format(version=version)
        self.existing, self.found = existing, found

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {
            "existing_content_sha256": self.existing,
            "found_content_sha256": self.found,
        }


class PackageExists(ColdkeepError):
    """A reproducibility package name already recorded (names are immutable)."""

    template = "reproducibility package {detail} is recorded already; nothing written"
    hint = "choose another --name (`coldkeep repro list` shows the recorded ones)"
