"""A conversation-archive test site: one database on a throwaway cluster, an archive directory, a
repository and a config file, driven through the real ``coldkeep`` command.

:meth:`ConvSite.check` is the oracle the integration and crash tests share: every row older than
the cutoff is in exactly one ledger batch, every batch file holds exactly its ledger ids with the
original data (byte-exact ``metadata``), the table and the ledger agree, and nothing else changed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import zstandard

from coldkeep.postgres.cluster import TempCluster
from tests.helpers import COLDKEEP, ME, toml_str

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
NOW_ENV = {"COLDKEEP_NOW": NOW.isoformat()}
CUTOFF = NOW - dt.timedelta(days=90)

#: awkward text: quotes, backslashes, JSON-looking text, control characters, non-ASCII
ODD_CONTENT = [
    'he said "hi" \\ and left',
    "tab\tnewline\ncr\r vt\x0b bell\x07 esc\x1b us\x1f del\x7f",
    "naïve café – 日本語 – emoji 🎉 – RTL עברית",
    '{"id":1,"session_id":"x","metadata":{"a":1}}',
    "\\N looks like COPY's NULL, \\. like its end marker",
    ',"metadata":{"fake":true}',
    "",
    "\u2028line separator\u2029 and ﻿ BOM",
]
ODD_METADATA = [
    None,
    '{"temperature": 0.1, "p": 1.000000000000000000001, "big": 12345678901234567890123}',
    '{"nested": {"metadata": {"x": [1, 2.50, -0.0, 1e-7]}}, "s": "quote \\" backslash \\\\ nl \\n"}',
    '{"unicode": "日本", "ctrl": "\\u0001"}',
    "[]",
    '"just a string"',
]


def meta_raw(line: bytes) -> bytes:
    """The raw ``metadata`` text of an archive line (the first ``,"metadata":`` is ours: the fields
    before it are a number, a uuid, a timestamp and JSON strings, which cannot hold it unescaped)."""
    k = line.index(b',"metadata":')
    assert line.endswith(b"}")
    return line[k + len(b',"metadata":') : -1]


def read_lines(path: Path) -> list[bytes]:
    if path.name.endswith(".gz"):
        import gzip

        data = gzip.decompress(path.read_bytes())
    else:
        with open(path, "rb") as fh:
            data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    assert data.endswith(b"\n") or not data
    return data.split(b"\n")[:-1]


@dataclass
class ConvSite:
    cluster: TempCluster
    root: Path
    dbname: str = "conv"
    batch_rows: int = 1000
    fmt: str = "jsonl.zst"
    repo_url: str = ""
    table: str = "conversations"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.archive_dir = self.root / "archive"
        self.cache = self.root / "cache"
        self.config_path = self.root / "coldkeep.toml"
        if not self.repo_url:
            self.repo_url = f"file://{self.root / 'repo'}"

    # -- set-up ----------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return self.cluster.dsn_for(self.dbname)

    def write_config(self) -> None:
        self.config_path.write_text(
            "[repository]\n"
            f"url = {toml_str(self.repo_url)}\n"
            f"owner = {toml_str(ME)}\n"
            "[postgres]\n"
            f"dsn = {toml_str(self.dsn)}\n"
            "[conversations]\n"
            f"table = {toml_str(self.table)}\n"
            f"archive_dir = {toml_str(str(self.archive_dir))}\n"
            f"format = {toml_str(self.fmt)}\n"
            f"batch_rows = {self.batch_rows}\n"
        )

    def create(self, *, template: str | None = None, repo: bool = True, schema: bool = True) -> ConvSite:
        clause = f' TEMPLATE "{template}"' if template else ""
        self.cluster.sql(f'CREATE DATABASE "{self.dbname}"{clause}')
        self.write_config()
        if repo and self.repo_url.startswith("file://") and not Path(self.repo_url[7:], "config").exists():
            self.ok("repo", "init", as_json=False)
        if schema and template is None:
            self.ok("conversations", "init-schema")
        return self

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLDKEEP_")}
        # COLDKEEP_NOW and the kill points are test hooks: they act only with the testing switch
        env.update(COLDKEEP_CACHE_DIR=str(self.cache), COLDKEEP_TESTING="1", **NOW_ENV)
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [COLDKEEP, "--config", str(self.config_path), *args],
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COLDKEEP, "--config", str(self.config_path), *args],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, as_json: bool = True, env: Mapping[str, str] | None = None) -> Any:
        full = ("--json", *args) if as_json else args
        proc = self.run(*full, env=env)
        assert proc.returncode == 0, (
            f"coldkeep {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
        return json.loads(proc.stdout) if as_json else proc.stdout

    # -- data ------------------------------------------------------------------------------------

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            cur = conn.execute(query.encode() if params is None else query, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def load(self, rows: int, *, seed: int = 1, months: int = 12, odd: bool = True, big: int = 0) -> None:
        """``rows`` rows with timestamps spread over ``months`` months before :data:`NOW`, in random
        order (ids do not follow timestamps); sessions of ~20 rows; some awkward values."""
        rng = random.Random(seed)
        span = months * 30.44 * 86400
        buf: list[tuple[Any, ...]] = []
        session = uuid.UUID(int=rng.getrandbits(128))
        for i in range(rows):
            if i % 20 == 0:
                session = uuid.UUID(int=rng.getrandbits(128), version=4)
            ts = NOW - dt.timedelta(seconds=rng.uniform(0, span))
            content = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "ε", "ζ")) for _ in range(12))
            meta: str | None = json.dumps({"turn": i % 20, "t": round(rng.random(), 6)})
            if odd and i % 37 == 0:
                content = ODD_CONTENT[(i // 37) % len(ODD_CONTENT)] + f" #{i}"
            if odd and i % 41 == 0:
                meta = ODD_METADATA[(i // 41) % len(ODD_METADATA)]
            speaker = None if odd and i % 97 == 0 else ("user" if i % 2 == 0 else "assistant")
            sid = None if odd and i % 89 == 0 else session
            buf.append((sid, ts, speaker, content, meta))
        for _ in range(big):
            buf.append(
                (session, NOW - dt.timedelta(days=200), "user", "x" * (10 * 1024 * 1024), '{"big": true}')
            )
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY {self.table} (session_id, timestamp, speaker, content, metadata) FROM STDIN"
                ) as copy,
            ):
                for row in buf:
                    copy.write_row(row)
            conn.execute(f"ANALYZE {self.table}")

    def rows(self) -> dict[int, tuple[Any, ...]]:
        """id -> (session_id, timestamp, speaker, content, metadata text) of every row in the table."""
        got = self.sql(
            f'SELECT id, session_id::text, "timestamp", speaker, content, metadata::text FROM {self.table}'
        )
        return {int(r[0]): tuple(r[1:]) for r in got}

    def ledger(self) -> list[dict[str, Any]]:
        cols = (
            "batch_id::text, month, file, format, sha256, bytes, row_count, ids, repo_object, purged_at, kind"
        )
        keys = [c.split("::")[0] for c in cols.split(", ")]
        return [
            dict(zip(keys, r, strict=True))
            for r in self.sql(f"SELECT {cols} FROM {self.table}_archive_ledger ORDER BY month, file")
        ]

    def archived_lines(self) -> dict[int, tuple[str, bytes]]:
        """id -> (file, line) over every final file in the archive directory (asserting no id twice)."""
        out: dict[int, tuple[str, bytes]] = {}
        for path in sorted(self.archive_dir.glob("*/conversations_*")):
            rel = f"{path.parent.name}/{path.name}"
            for line in read_lines(path):
                rid = int(line[6 : line.index(b",", 6)])
                assert rid not in out, f"id {rid} is in {out[rid][0]} and {rel}"
                out[rid] = (rel, line)
        return out

    # -- the oracle ------------------------------------------------------------------------------

    def check(
        self,
        original: dict[int, tuple[Any, ...]],
        *,
        purged: bool | None = None,
        cutoff: dt.datetime = CUTOFF,
        changed: set[int] | frozenset[int] = frozenset(),
    ) -> dict[str, int]:
        """Everything the archive promises, after a run that completed.  ``purged``: True — every
        eligible row left the table; False — none did; None — either.  ``changed``: ids whose row
        was edited on purpose (their archived copy may be an older version)."""
        eligible = {i for i, r in original.items() if r[1] is not None and r[1] < cutoff}
        ledger = self.ledger()
        ledger_ids: dict[int, str] = {}
        for batch in ledger:
            assert batch["row_count"] == len(batch["ids"]), batch["file"]
            for i in batch["ids"]:
                assert i not in ledger_ids, f"id {i} is in {ledger_ids[i]} and {batch['file']}"
                ledger_ids[i] = batch["file"]
        assert set(ledger_ids) == eligible, (
            f"ledger: {len(set(ledger_ids) - eligible)} ids not eligible, {len(eligible - set(ledger_ids))} missing"
        )
        on_disk = {f"{p.parent.name}/{p.name}" for p in self.archive_dir.glob("*/conversations_*")}
        assert on_disk == {b["file"] for b in ledger}, (
            f"files not in the ledger: {on_disk ^ {b['file'] for b in ledger}}"
        )
        lines = self.archived_lines()
        assert {i: f for i, (f, _) in lines.items()} == ledger_ids
        for i, (_file, line) in lines.items():
            doc = json.loads(line)
            assert list(doc) == ["id", "session_id", "timestamp", "speaker", "content", "metadata"]
            if i in changed:
                continue
            sid, ts, speaker, content, meta = original[i]
            assert doc["session_id"] == sid
            assert dt.datetime.fromisoformat(doc["timestamp"]) == ts
            assert doc["timestamp"].endswith("+00:00")
            assert doc["timestamp"][:7] == ts.astimezone(dt.UTC).strftime("%Y-%m")
            assert doc["speaker"] == speaker
            assert doc["content"] == content
            assert meta_raw(line) == (meta.encode() if meta is not None else b"null"), i
        table = self.rows()
        flags = {
            int(r[0]): (r[1], r[2]) for r in self.sql(f"SELECT id, archived, archive_file FROM {self.table}")
        }
        for i, row in original.items():
            if i in eligible:
                if i in table:
                    assert flags[i] == (True, ledger_ids[i]), (i, flags[i])
                    if i not in changed:
                        assert table[i] == row
                else:
                    assert purged is not False, f"row {i} left the table without --purge"
            else:
                assert i in table and table[i] == row and flags[i][0] is not True, i
        if purged is True:
            assert not (eligible - changed) & set(table), "eligible rows left in the table after purge"
        return {"eligible": len(eligible), "batches": len(ledger), "in_table": len(eligible & set(table))}
