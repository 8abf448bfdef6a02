"""``coldkeep.toml``: finding, parsing and validating the configuration.

The file is TOML, validated by pydantic models that forbid unknown keys, refuse wrong types
(strict mode: ``"30"`` is not an integer) and carry the spec's numbers as defaults.  Every error
becomes one :class:`~coldkeep.errors.ConfigError` line naming the key (``postgres.retention_days``)
or the file line (TOML syntax errors).

A service section (``[postgres]``, ``[checkpoints]``, ``[datasets]``, ``[conversations]``) is *in
use* when it appears in the file, unless it says ``enabled = false``.  Only sections in use are
checked against the disk (:func:`check_paths`).

Secrets never live in the file: ``[repository].password_file`` names a file, ``COLDKEEP_PASSWORD``
wins over it, PostgreSQL passwords come from the environment or a passfile
(``[postgres].passfile``, else ``PGPASSFILE``/``~/.pgpass``).  A DSN holding a password is refused.
"""

from __future__ import annotations

import os
import pwd
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coldkeep.errors import ConfigError, UsageError
from coldkeep.lean.config import ENV_CONFIG as ENV_CONFIG  # one lookup order, shared with the lean path
from coldkeep.lean.config import endpoint_url_problem, find_config_path, repository_url_problem

# ------------------------------------------------------------------------------------------------
# value types


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10, "ki": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20, "mi": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30, "gi": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40, "ti": 2**40,
    "p": 10**15, "pb": 10**15, "pib": 2**50, "pi": 2**50,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``"4TB"`` → 4·10¹², ``"512MiB"`` → 512·2²⁰; a bare number is bytes."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 4TB, 512GiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _check_size(value: str) -> str:
    parse_size(value)
    return value


Size = Annotated[str, Field(description="a size such as 2TB or 512GiB")]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
RetentionDays = NonNegativeInt | Literal["forever"]

_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_CRON_LIMITS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def check_cron(expr: str) -> str:
    """Five-field cron expression (minute hour day-of-month month day-of-week), numbers only."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression needs 5 fields, got {len(fields)}: {expr!r}")
    for field, (lo, hi) in zip(fields, _CRON_LIMITS, strict=True):
        if not _CRON_FIELD.match(field):
            raise ValueError(f"bad cron field {field!r} in {expr!r}")
        for number in re.findall(r"\d+", re.sub(r"/\d+", "", field)):
            if not lo <= int(number) <= hi:
                raise ValueError(f"cron field {field!r} out of range {lo}-{hi} in {expr!r}")
    return expr


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


# ------------------------------------------------------------------------------------------------
# [repository]


def _check_repo_url(url: str) -> str:
    problem = repository_url_problem(url)
    if problem:
        raise ValueError(problem)
    return url


def _check_endpoint_url(url: str) -> str:
    problem = endpoint_url_problem(url)
    if problem:
        raise ValueError(problem)
    return url


#: seconds an S3 endpoint may take to accept a connection / to send the next bytes of an answer;
#: botocore tries a request twice, so an endpoint that never answers fails in ~2 × read_timeout
ConnectTimeout = Annotated[float, Field(ge=0.5, le=600, allow_inf_nan=False)]
ReadTimeout = Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)]


class CopyConfig(_Section):
    """A named copy of the repository (``coldkeep repo copy --to NAME``)."""

    url: str
    endpoint_url: str = ""
    region: str = ""
    password_file: str = ""
    connect_timeout: ConnectTimeout = 5.0
    read_timeout: ReadTimeout = 15.0

    _url = field_validator("url")(classmethod(lambda cls, v: _check_repo_url(v)))
    _endpoint = field_validator("endpoint_url")(classmethod(lambda cls, v: _check_endpoint_url(v)))


class RepositoryConfig(_Section):
    url: str = "file:///mnt/hdd/coldkeep"
    endpoint_url: str = ""
    region: str = ""
    password_file: str = ""
    owner: str = "postgres"
    compression_level: Annotated[int, Field(ge=-7, le=22)] = 3
    connect_timeout: ConnectTimeout = 5.0
    read_timeout: ReadTimeout = 15.0
    copies: dict[str, CopyConfig] = Field(default_factory=dict)

    _url = field_validator("url")(classmethod(lambda cls, v: _check_repo_url(v)))
    _endpoint = field_validator("endpoint_url")(classmethod(lambda cls, v: _check_endpoint_url(v)))


# ------------------------------------------------------------------------------------------------
# service sections


class ServiceSection(_Section):
    #: None = "in use when the section is in the file"; resolved by :func:`load`.
    enabled: bool | None = None

    @property
    def in_use(self) -> bool:
        return bool(self.enabled)


_PASSWORD_IN_DSN = re.compile(r"(^|\s)password\s*=|://[^/@:\s]+:[^/@\s]*@", re.IGNORECASE)


def _parse_dsn(dsn: str) -> None:
    """``ValueError`` unless libpq parses ``dsn`` (``key=value`` pairs or a ``postgresql://`` URL)."""
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split()).removeprefix("invalid connection string ")
        raise ValueError(
            f"not a connection string ({reason}); write key=value pairs, e.g. "
            "'host=/var/run/postgresql port=5432 dbname=iccm user=postgres', or a postgresql:// URL"
        ) from None


class PostgresConfig(ServiceSection):
    dsn: str = "host=/var/run/postgresql port=5432 dbname=iccm user=postgres"
    passfile: str = ""
    data_dir: str = "/var/lib/postgresql/15/main"
    config_dir: str = ""  # Debian keeps postgresql.conf in /etc/postgresql/15/main; empty: data_dir
    bin_dir: str = ""
    os_user: str = "postgres"
    retention_days: NonNegativeInt = 30
    archive_timeout: NonNegativeInt = 300
    # `pg backup`: the most seconds its WAL may take to be archived (the server's wait at the end
    # of pg_basebackup, then the wait for the segments in the repository) before the backup fails
    backup_wal_timeout: Annotated[int, Field(ge=1, le=86400)] = 300
    # archive_command = wal-push --async (postgres/spool.py): one long-lived pusher instead of an
    # interpreter per segment; a segment is still acknowledged only once durable in the repository.
    # false: one `wal-push` process per segment (~0.13 s CPU each: -11 % TPS on a busy 2-core box)
    archive_async: bool = True
    # restore_command of `pg restore` / restore tests: wal-fetch --prefetch N (0: one segment at a time)
    restore_prefetch: int = Field(default=8, ge=0, le=64)
    archive_async_workers: int = Field(default=0, ge=0, le=64)  # 0: CPUs, at most 4
    # zstd level of base-backup chunks (database pages: level 1 costs ~1/3 less CPU than 3 for
    # ~3 % more bytes; docs/benchmarks.md); WAL segments use at most level 1 anyway
    compression_level: Annotated[int, Field(ge=-7, le=22)] = 1
    count_tables: list[str] = Field(default_factory=lambda: ["conversations"])
    check_sql: list[str] = Field(default_factory=list)
    database_size: Size = ""  # for projected restore times; empty: measure
    # `pg receive-wal`: spool directory (empty: see coldkeep.postgres.receive.default_spool), the
    # replication slot = application_name in synchronous_standby_names, and a DSN for the
    # replication connection (empty: dsn)
    receive_dir: str = ""
    receive_slot: str = "coldkeep"
    receive_dsn: str = ""

    @field_validator("dsn", "receive_dsn")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if _PASSWORD_IN_DSN.search(v):
            raise ValueError("the DSN must not contain a password; use PGPASSFILE or [postgres].passfile")
        if v:
            _parse_dsn(v)
        return v

    @field_validator("receive_slot")
    @classmethod
    def _slot_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]{1,63}", v):
            raise ValueError(f"a replication slot name is 1-63 of a-z, 0-9 and _ (got {v!r})")
        return v

    @field_validator("receive_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if v and not os.path.isabs(v):
            raise ValueError(f"must be an absolute path (got {v!r})")
        return v

    @field_validator("database_size")
    @classmethod
    def _size(cls, v: str) -> str:
        return _check_size(v) if v else v


class HotRetention(_Section):
    checkpoint: RetentionDays = 7
    best: RetentionDays = 90
    production: RetentionDays = "forever"
    rollback: RetentionDays = 30


class CheckpointsConfig(ServiceSection):
    root: str = "/mnt/nvme/models"
    phase_glob: str = "cet-d-*"
    archive_root: str = "/mnt/hdd/model_archives"
    hot_retention_days: HotRetention = Field(default_factory=HotRetention)
    # a checkpoint is complete only when nothing in it changed for this long (mtime and ctime)
    settle_seconds: NonNegativeInt = 120
    # run after `checkpoints recover` / `verify` when set; `{path}` is the checkpoint directory
    load_check_command: str = ""
    load_check_timeout: PositiveInt = 600


class DatasetsConfig(ServiceSection):
    root: str = "/mnt/projects/ICCM/datasets/applications"
    splits: list[str] = Field(default_factory=lambda: ["train", "holdout"])
    version: str = "v3.0"
    # `datasets export`: where the archives go, their name ({prefix}_{version}_{date}) and format
    export_dir: str = "/mnt/hdd/dataset_snapshots"
    export_prefix: str = "iccm_dataset"
    export_format: Literal["tar.gz", "tar.zst"] = "tar.gz"

    @field_validator("export_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", v):
            raise ValueError(f"1-64 letters, digits, '.', '_', '+' or '-' (it starts a file name; got {v!r})")
        return v


class ConversationsConfig(ServiceSection):
    table: str = "conversations"
    archive_after_days: NonNegativeInt = 90
    archive_dir: str = "/mnt/hdd/conversation_archives"
    format: Literal["jsonl.zst", "jsonl.gz"] = "jsonl.zst"
    batch_rows: PositiveInt = 50_000

    @field_validator("table")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", v):
            raise ValueError(f"not a plain table name: {v!r}")
        return v


# ------------------------------------------------------------------------------------------------
# [tiers], [storage], [metrics], [schedule]


class Tier(_Section):
    retention_days: RetentionDays
    paths: list[str] = Field(default_factory=list)


class TiersConfig(_Section):
    tier1: Tier = Field(default_factory=lambda: Tier(retention_days="forever"))
    tier2: Tier = Field(default_factory=lambda: Tier(retention_days=365))
    tier3: Tier = Field(default_factory=lambda: Tier(retention_days=30))

    @field_validator("tier1")
    @classmethod
    def _tier1_forever(cls, v: Tier) -> Tier:
        if v.retention_days != "forever":
            raise ValueError('Tier 1 is kept forever: retention_days must be "forever"')
        return v


class Allocation(_Section):
    path: str
    size: Size

    _size = field_validator("size")(classmethod(lambda cls, v: _check_size(v)))


class Location(_Section):
    path: str
    capacity: Size
    allocations: dict[str, Allocation] = Field(default_factory=dict)

    _size = field_validator("capacity")(classmethod(lambda cls, v: _check_size(v)))

    @model_validator(mode="after")
    def _fits(self) -> Location:
        total = sum(parse_size(a.size) for a in self.allocations.values())
        if total > parse_size(self.capacity):
            raise ValueError(f"allocations add up to {total} bytes, more than capacity {self.capacity}")
        return self


def _hot() -> Location:
    return Location(
        path="/mnt/nvme",
        capacity="4TB",
        allocations={
            "models": Allocation(path="/mnt/nvme/models", size="1TB"),
            "postgres": Allocation(path="/var/lib/postgresql", size="1TB"),
            "docker": Allocation(path="/var/lib/docker", size="1TB"),
            "conversations": Allocation(path="/mnt/nvme/conversations", size="1TB"),
        },
    )


def _cold() -> Location:
    return Location(
        path="/mnt/hdd",
        capacity="8TB",
        allocations={
            "postgres_backups": Allocation(path="/mnt/hdd/coldkeep", size="2TB"),
            "checkpoint_archives": Allocation(path="/mnt/hdd/model_archives", size="2TB"),
            "dataset_snapshots": Allocation(path="/mnt/hdd/dataset_snapshots", size="2TB"),
            "conversation_archives": Allocation(path="/mnt/hdd/conversation_archives", size="2TB"),
        },
    )


class StorageConfig(_Section):
    hot: Location = Field(default_factory=_hot)
    cold: Location = Field(default_factory=_cold)


class MetricsConfig(_Section):
    textfile_dir: str = "/var/lib/prometheus/node-exporter"
    pushgateway_url: str = ""
    listen: str = "127.0.0.1:9788"
    job: str = "coldkeep"


class ScheduleConfig(_Section):
    pg_backup: str = "0 2 * * *"  # spec: daily at 2 AM
    pg_restore_test: str = "0 5 * * 0"  # spec: weekly restore test
    pg_expire: str = "30 2 * * *"
    checkpoints_archive: str = "0 3 * * 0"  # spec: Sundays 3 AM
    conversations_archive: str = "0 4 1 * *"  # spec: first of the month 4 AM
    datasets_snapshot: str = ""  # spec: on events (before training, after expansion)
    repo_check: str = "0 6 * * 0"
    repo_copy: str = "0 7 * * *"
    drill: str = "0 8 1 * *"  # spec: monthly DR test
    tiers_backup: str = "0 1 * * *"  # when a tier has paths
    storage: str = "15 6 * * *"  # a sample of every allocation's use a day: its growth

    @field_validator("*")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v) if v else v


class DrillConfig(_Section):
    """``coldkeep drill``: the recovery time objective a drill is judged against."""

    rto_objective: str = "1h"  # spec: "< 1 hour recovery time objective"

    @field_validator("rto_objective")
    @classmethod
    def _duration(cls, v: str) -> str:
        from coldkeep.clock import parse_duration

        try:
            seconds = parse_duration(v).total_seconds()
        except UsageError:
            seconds = 0
        if seconds <= 0:
            raise ValueError("must be a positive duration, e.g. 1h or 45m")
        return v

    @property
    def rto_objective_s(self) -> float:
        from coldkeep.clock import parse_duration

        return parse_duration(self.rto_objective).total_seconds()


class Config(_Section):
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig)
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    conversations: ConversationsConfig = Field(default_factory=ConversationsConfig)
    tiers: TiersConfig = Field(default_factory=TiersConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    drill: DrillConfig = Field(default_factory=DrillConfig)

    #: where the file was read from (not a TOML key)
    source: str = Field(default="", exclude=True)

    def services(self) -> Iterator[tuple[str, ServiceSection]]:
        for name in SERVICE_SECTIONS:
            yield name, getattr(self, name)


SERVICE_SECTIONS = ("postgres", "checkpoints", "datasets", "conversations")

# ------------------------------------------------------------------------------------------------
# loading


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config`` > ``$COLDKEEP_CONFIG`` > ``./coldkeep.toml`` > ``/etc/coldkeep/coldkeep.toml``
    (:func:`coldkeep.lean.config.find_config_path`, which the per-segment WAL commands use)."""
    return Path(find_config_path(os.fspath(explicit) if explicit else None))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "literal[", "constrained-", "int", "str")) or "[" in item:
            continue  # pydantic's union-branch labels, not keys
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if "input" in error and kind not in ("missing",) and not isinstance(error["input"], dict):
        shown = error["input"]
        if isinstance(shown, str):
            shown = _DSN_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", shown))
        if "(got " not in msg:  # the validator's own message may show it already
            msg += f" (got {shown!r})"
    return msg


def validate(data: Mapping[str, Any], *, source: str = "") -> Config:
    """Validate parsed TOML; raise one-line :class:`ConfigError` naming the first bad key."""
    try:
        config = Config.model_validate(dict(data))
    except ValidationError as exc:
        errors = exc.errors()
        # several errors for one key (union branches) → report the most specific one
        first = errors[0]
        key = _format_loc(first["loc"])
        same_key = [e for e in errors if _format_loc(e["loc"]) == key]
        chosen = next((e for e in same_key if e["type"] not in ("int_type", "literal_error")), first)
        where = f"{source}: " if source else ""
        more = f" (+{len({_format_loc(e['loc']) for e in errors}) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{where}{key}: {_describe(chosen)}{more}") from None
    for name in SERVICE_SECTIONS:
        section: ServiceSection = getattr(config, name)
        if section.enabled is None:
            section.enabled = name in data
    config.source = source
    return config


def parse_text(text: str, *, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}", hint="fix the line it names") from None
    return validate(data, source=source)


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    return load_with_text(explicit)[0]


def load_with_text(explicit: str | os.PathLike[str] | None = None) -> tuple[Config, str]:
    """:func:`load`, and the text it validated."""
    path = find_config(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_text(text, source=str(path)), text


# ------------------------------------------------------------------------------------------------
# checks against the disk (only for sections in use)


def check_paths(config: Config) -> list[str]:
    """Problems with paths that the sections in use need, one line each (empty: fine)."""
    problems: list[str] = []

    def need_dir(key: str, value: str, *, may_be_created: bool = False) -> None:
        path = Path(value)
        if path.is_dir():
            return
        if may_be_created and path.parent.is_dir():
            return
        what = "neither it nor its parent exists" if may_be_created else "no such directory"
        problems.append(f"{key}: {value}: {what}")

    def need_file(key: str, value: str) -> None:
        if value and not Path(value).is_file():
            problems.append(f"{key}: {value}: no such file")

    repo = config.repository
    parsed = urlparse(repo.url)
    if parsed.scheme == "file":
        need_dir("repository.url", parsed.path, may_be_created=True)
    need_file("repository.password_file", repo.password_file)
    for name, copy in repo.copies.items():
        if urlparse(copy.url).scheme == "file":
            need_dir(f"repository.copies.{name}.url", urlparse(copy.url).path, may_be_created=True)
        need_file(f"repository.copies.{name}.password_file", copy.password_file)

    pg = config.postgres
    if pg.in_use:
        need_dir("postgres.data_dir", pg.data_dir)
        try:
            pwd.getpwnam(pg.os_user)
        except KeyError:
            problems.append(f"postgres.os_user: {pg.os_user}: no such user on this machine")
        if pg.bin_dir:
            need_dir("postgres.bin_dir", pg.bin_dir)
        need_file("postgres.passfile", pg.passfile)
        if pg.config_dir:
            need_dir("postgres.config_dir", pg.config_dir)
        if pg.receive_dir:
            need_dir("postgres.receive_dir", pg.receive_dir, may_be_created=True)
    if config.checkpoints.in_use:
        need_dir("checkpoints.root", config.checkpoints.root)
    if config.datasets.in_use:
        need_dir("datasets.root", config.datasets.root)
    if config.conversations.in_use:
        need_dir("conversations.archive_dir", config.conversations.archive_dir, may_be_created=True)
    return problems


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with anything secret-looking masked."""
    data = config.model_dump(mode="json")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if _SECRET_KEY.search(k) and v and not k.endswith("_file") else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return _URL_PASSWORD.sub(r"\1***@", node)
        return node

    return dict(walk(data))


_SECRET_KEY = re.compile(r"password|secret|token|passphrase", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]+:)[^/@\s]*@")
#: a libpq ``password=`` value: quoted (spaces and escaped quotes inside; to the end when the
#: quote is never closed) or up to the next space
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)
