"""Run records: one write-once record per job run, stored in the repository.

Every job (``backup``, ``pg backup``, ``pg restore-test``, ``pg expire``, ``conversations
archive``, ``repo check``, ``repo copy``, and the services still to come) records how it went:
job, start, end, result (``ok`` / ``partial`` / ``failed``), the error class, logical and new
bytes, and the job's own figures.  The records are the single source of the metrics, the alert
inputs and ``coldkeep runs``.

Storage.  A record is a named object ``named/runs/<start>-<job>-<random>`` (see
:mod:`coldkeep.repository.named`): written once, never replaced, encrypted like everything else,
checked by ``repo check --read-data`` and carried by ``repo copy`` — so the offsite copy has the
history too.  One object per run means concurrent writers never contend (no compare-and-swap),
and the name sorts by start time.

Reading.  :func:`list_records` lists ``named/runs/`` (one request) and reads only the records its
local cache (``<cache dir>/<repository id>/runs.json``) lacks: a thousand records are one LIST.

A record that cannot be written (the repository unreachable, the passphrase missing) is kept in
``<cache dir>/runs-pending/<hash of the repository URL>/`` and written the next time a run of the
same repository records; until then the metrics count it too, so an unreachable repository shows
as failures instead of silence.

Recording never changes a job's outcome: a failure to record is one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coldkeep import __version__, clock
from coldkeep.durable import write_atomic
from coldkeep.errors import EXIT_INTEGRITY, EXIT_PARTIAL, ColdkeepError
from coldkeep.repository.format import NAMED_PREFIX
from coldkeep.repository.index import cache_root

if TYPE_CHECKING:
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.setup import RepositorySectionLike
    from coldkeep.storage.base import Backend

log = logging.getLogger(__name__)

Result = Literal["ok", "partial", "failed"]

#: the prefix of run records among the named objects
RUNS_PREFIX = "runs/"
#: record format version
RECORD_VERSION = 1
#: the keys of a job's JSON result that hold its logical bytes / the bytes it newly stored
LOGICAL_KEYS = ("logical_bytes",)
NEW_KEYS = ("new_stored_bytes", "bytes_written", "bytes")
#: the longest string figure kept from a job's result
_MAX_TEXT = 200
#: ``scheme://user:password@``: a password in a URL figure is masked
_URL_PASSWORD = re.compile(r"(://[^/@:\s]+:)[^/@\s]*@")


def job_type(job: str, target: str = "") -> str:
    """The metric label of a job: ``pg backup`` → ``pg_backup``; a target is appended
    (``repo copy`` to ``offsite`` → ``repo_copy_offsite``)."""
    base = "".join(c if c.isalnum() else "_" for c in job.strip().lower())
    return f"{base}_{target}" if target else base


@dataclass
class RunRecord:
    """One run of one job (the JSON document of a record is :meth:`to_json`)."""

    job: str
    start: datetime
    end: datetime
    result: Result
    target: str = ""
    exit_code: int = 0
    error_class: str = ""
    error: str = ""
    logical_bytes: int | None = None
    new_bytes: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    name: str = ""  # the named object, without the ``runs/`` prefix of its key
    pending: bool = False  # kept locally, not yet in the repository

    @property
    def type(self) -> str:
        return job_type(self.job, self.target)

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    @property
    def succeeded(self) -> bool:
        return self.result != "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "name": self.name,
            "job": self.job,
            "target": self.target,
            "type": self.type,
            "start": clock.isoformat(self.start),
            "end": clock.isoformat(self.end),
            "duration_s": round(self.duration_s, 3),
            "result": self.result,
            "exit_code": self.exit_code,
            "error_class": self.error_class,
            "error": self.error,
            "logical_bytes": self.logical_bytes,
            "new_bytes": self.new_bytes,
            "figures": self.figures,
            "host": self.host,
            "coldkeep": __version__,
            **({"pending": True} if self.pending else {}),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunRecord:
        result = doc["result"]
        if result not in ("ok", "partial", "failed"):
            raise ValueError(f"unknown result {result!r}")
        return cls(
            job=str(doc["job"]), start=clock.parse_timestamp(doc["start"]),
            end=clock.parse_timestamp(doc["end"]), result=result, target=str(doc.get("target", "")),
            exit_code=int(doc.get("exit_code", 0)), error_class=str(doc.get("error_class", "")),
            error=str(doc.get("error", "")), logical_bytes=doc.get("logical_bytes"),
            new_bytes=doc.get("new_bytes"), figures=dict(doc.get("figures") or {}),
            host=str(doc.get("host", "")), name=str(doc.get("name", "")), pending=bool(doc.get("pending")),
        )  # fmt: skip


def record_name(job: str, start: datetime) -> str:
    """``<start, UTC, µs>-<job type>-<8 random hex>``: unique, sorted by start time."""
    utc = start.astimezone(UTC)
    return f"{utc:%Y%m%dT%H%M%S%f}Z-{job_type(job)}-{os.urandom(4).hex()}"


# ------------------------------------------------------------------------------------------------
# writing and reading records


def write_record(repo: Repository, record: RunRecord) -> None:
    """Store ``record`` as ``named/runs/<name>`` (write-once)."""
    if not record.name:
        record.name = record_name(record.job, record.start)
    record.pending = False
    doc = record.to_json()
    repo.put_named(RUNS_PREFIX + record.name, json.dumps(doc, sort_keys=True).encode(), {"kind": "run"})


def mirror_record(repo: Repository, record: RunRecord, dst: Backend) -> bool:
    """Put ``record``'s stored object, as it is in ``repo``, into the backend ``dst`` too (a
    copy of the repository: ``repo copy`` leaves its own record in the copy it made, so the next
    copy finds nothing new).  ``True`` if written now."""
    key = NAMED_PREFIX + RUNS_PREFIX + record.name
    return dst.put_if_absent(key, repo.backend.get(key))


def _cache_path(repo: Repository) -> Path:
    return cache_root() / repo.config.id / "runs.json"


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path, docs: dict[str, dict[str, Any]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(docs, separators=(",", ":")).encode(), sync=False)
    except OSError as exc:  # a cache: the next listing reads the records again
        log.debug("run record cache not written (%s)", exc)


def _read_doc(repo: Repository, name: str) -> dict[str, Any] | None:
    try:
        _meta, data = repo.get_named(RUNS_PREFIX + name)
        doc = json.loads(data)
        RunRecord.from_json(doc)  # well-formed
    except (ColdkeepError, ValueError, KeyError, TypeError) as exc:
        detail = exc.message if isinstance(exc, ColdkeepError) else str(exc)
        log.warning("run record %s skipped: %s", name, detail)
        return None
    return dict(doc)


def list_records(repo: Repository, *, pending_url: str = "") -> list[RunRecord]:
    """Every run record of ``repo``, oldest first (and, with ``pending_url``, the records kept
    locally for the repository at that URL).  Reads only the records the local cache lacks."""
    path = _cache_path(repo)
    cached = _load_cache(path)
    names = [name.removeprefix(RUNS_PREFIX) for name, _size in repo.list_named(RUNS_PREFIX)]
    missing = [name for name in names if name not in cached]
    changed = len(cached) != len(names) - len(missing)
    if missing:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="coldkeep-runs") as pool:
            for name, doc in zip(missing, pool.map(lambda n: _read_doc(repo, n), missing), strict=True):
                if doc is not None:
                    cached[name] = doc
                    changed = True
    listed = set(names)
    docs = {name: doc for name, doc in cached.items() if name in listed}
    if changed or len(docs) != len(cached):
        _save_cache(path, docs)
    records = [RunRecord.from_json(docs[name]) for name in sorted(docs)]
    if pending_url:
        records += pending_records(pending_url)
        records.sort(key=lambda r: (r.start, r.name))
    return records


def filter_records(
    records: Iterable[RunRecord], *, job: str | None = None, since: datetime | None = None
) -> list[RunRecord]:
    """The records of ``job`` (its name or its type: ``pg backup`` or ``pg_backup``) started at or
    after ``since``."""
    wanted = None if job is None else job_type(job)
    return [
        r
        for r in records
        if (wanted is None or wanted in (r.type, job_type(r.job))) and (since is None or r.start >= since)
    ]


# ------------------------------------------------------------------------------------------------
# records kept locally until the repository can be written


def _pending_dir(url: str) -> Path:
    return cache_root() / "runs-pending" / hashlib.sha256(url.encode()).hexdigest()[:16]


def keep_pending(url: str, record: RunRecord) -> Path:
    """Keep ``record`` locally for the repository at ``url``."""
    if not record.name:
        record.name = record_name(record.job, record.start)
    record.pending = True
    directory = _pending_dir(url)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{record.name}.json"
    write_atomic(path, json.dumps(record.to_json()).encode())
    return path


def pending_records(url: str) -> list[RunRecord]:
    """The records kept locally for the repository at ``url``."""
    records = []
    for path in sorted(_pending_dir(url).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            records.append(RunRecord.from_json(json.loads(path.read_bytes())))
    return records


def flush_pending(repo: Repository, url: str) -> int:
    """Write the records kept locally for the repository at ``url`` into ``repo``; returns how
    many were written."""
    written = 0
    for path in sorted(_pending_dir(url).glob("*.json")):
        try:
            record = RunRecord.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        write_record(repo, record)
        path.unlink(missing_ok=True)
        written += 1
    return written


# ------------------------------------------------------------------------------------------------
# recording a run


@dataclass
class Run:
    """The run being recorded: the job sets what it knows (:meth:`set`, :meth:`attach`)."""

    job: str
    start: datetime
    target: str = ""
    exit_code: int = 0
    partial: bool = False
    logical_bytes: int | None = None
    new_bytes: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    repo: Repository | None = None

    def attach(self, repo: Repository) -> None:
        """The repository the job opened: the record is written with its keys (no second
        passphrase derivation), through a backend of its own."""
        self.repo = repo

    def set(self, *, logical_bytes: int | None = None, new_bytes: int | None = None, **figures: Any) -> None:
        if logical_bytes is not None:
            self.logical_bytes = int(logical_bytes)
        if new_bytes is not None:
            self.new_bytes = int(new_bytes)
        self.figures.update(figures)

    def set_from_result(self, data: Any) -> None:
        """Take the bytes and the scalar figures from a job's JSON result (what ``--json``
        prints): ``logical_bytes``; ``new_stored_bytes`` / ``bytes_written`` / ``bytes``."""
        if not isinstance(data, dict):
            return
        for key, value in data.items():
            scalar = value is None or isinstance(value, bool | int | float)
            if scalar:
                self.figures.setdefault(key, value)
            elif isinstance(value, str) and len(value) <= _MAX_TEXT:
                self.figures.setdefault(key, _URL_PASSWORD.sub(r"\1***@", value))  # invariant 6
            elif isinstance(value, list) and key in ("warnings", "problems", "checks"):
                self.figures.setdefault(f"{key}_count", len(value))
        if self.logical_bytes is None:
            self.logical_bytes = _first_int(data, LOGICAL_KEYS)
        if self.new_bytes is None:
            self.new_bytes = _first_int(data, NEW_KEYS)


def _first_int(data: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _result(run: Run, error: BaseException | None) -> tuple[Result, str, str, int]:
    """(result, error class, error message, exit code) of a run that ended with ``error``."""
    if error is not None:
        if isinstance(error, ColdkeepError):
            return "failed", type(error).__name__, error.message[:500], error.exit_code
        if isinstance(error, KeyboardInterrupt):
            return "failed", "Interrupted", "interrupted", 130
        return "failed", type(error).__name__, " ".join(str(error).split())[:500], 1
    if run.partial or run.exit_code == EXIT_PARTIAL:
        return "partial", "", "", run.exit_code
    if run.exit_code:
        cls = "IntegrityError" if run.exit_code == EXIT_INTEGRITY else "Failed"
        return "failed", cls, "", run.exit_code
    return "ok", "", "", 0


#: what a recording calls after the record is stored: (record, repository or None when unreachable)
AfterRecord = Callable[[RunRecord, "Repository | None"], None]


@contextlib.contextmanager
def recording(
    job: str,
    section: RepositorySectionLike | Callable[[], RepositorySectionLike],
    *,
    target: str = "",
    after: AfterRecord | None = None,
) -> Iterator[Run]:
    """Record one run of ``job`` in the repository ``section`` names.

    The body runs the job; it may :meth:`Run.attach` the repository it opened, :meth:`Run.set`
    figures and set ``exit_code`` / ``partial``.  An exception is recorded as a failure with its
    class and propagates unchanged.  ``after`` (the metrics) is called once the record is stored.
    Recording never raises and never changes the job's outcome.

    >>> with recording("checkpoints archive", config.repository) as run:   # doctest: +SKIP
    ...     result = archive(...)
    ...     run.set(logical_bytes=result.logical_bytes, new_bytes=result.new_bytes, archived=3)
    """
    run = Run(job=job, start=clock.now(), target=target)
    error: BaseException | None = None
    try:
        yield run
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            _finish(run, error, section, after)
        except Exception as exc:  # never mask the job's own outcome
            log.warning("the run of %s was not recorded: %s", job, exc)


def _finish(
    run: Run,
    error: BaseException | None,
    section: RepositorySectionLike | Callable[[], RepositorySectionLike],
    after: AfterRecord | None,
) -> None:
    result, error_class, message, code = _result(run, error)
    record = RunRecord(
        job=run.job, start=run.start, end=clock.now(), result=result, target=run.target,
        exit_code=code, error_class=error_class, error=message, logical_bytes=run.logical_bytes,
        new_bytes=run.new_bytes, figures=run.figures, host=socket.gethostname(),
    )  # fmt: skip
    try:
        sec = section() if callable(section) else section
    except Exception as exc:  # no usable config: nowhere to record (the job said why)
        log.debug("the run of %s was not recorded: %s", run.job, exc)
        return
    repo = None
    try:
        repo = _open_for_record(sec, run.repo)
        flush_pending(repo, sec.url)
        write_record(repo, record)
    except Exception as exc:
        detail = exc.message if isinstance(exc, ColdkeepError) else str(exc)
        path = keep_pending(sec.url, record)
        say = log.warning if record.succeeded else log.info  # a failed job has said why already
        say("run record of %s kept locally in %s (repository not written: %s)", run.job, path, detail)
        if repo is not None:
            repo.close()
        repo = None
    try:
        if after is not None:
            after(record, repo)
    finally:
        if repo is not None:
            repo.close()


def _open_for_record(section: RepositorySectionLike, attached: Repository | None) -> Repository:
    from coldkeep.repository.repository import Repository
    from coldkeep.repository.setup import backend_for, open_repository_section

    if attached is None:
        return open_repository_section(section)
    return Repository(backend_for(section, owner=section.owner), attached.keys, attached.config)
