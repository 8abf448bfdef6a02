#!/usr/bin/env python3
"""Deterministic, text-heavy ``conversations`` data for the PostgreSQL benchmark (bench/bench_pg.sh).

    pg_load.py load DSN --mb 1500 [--seed 7]          create + fill the table (COPY), ~MB of heap
    pg_load.py day DSN --day 1 [--insert-frac 0.02] [--update-frac 0.002] [--seed 7]
    pg_load.py info DSN                                 rows, sizes (JSON)

Rows look like a chat log captured as it happens: ids and timestamps increase together (rows are
appended), sessions of ~20 turns alternate user / assistant, user turns are short (5-60 words),
assistant turns long (log-normal, median ~140 words, up to ~1,500: a few percent exceed the 2 kB
TOAST threshold and are stored pglz-compressed out of line, as in a real database). Words come from
a 30,000-word Zipf vocabulary with English letter frequencies, with sentence punctuation, so the
text compresses like prose (zstd -3: ~2.5-3x), not like pgbench's blank padding (~20x).

A "day" (the issue's definition): insert new rows equal to ``--insert-frac`` of the table
(appended, timestamps of that day) and update ``--update-frac`` of all rows chosen uniformly at
random (a feedback rating added to ``metadata`` and ``archived`` flipped; same row size class, so
PostgreSQL does HOT or regular updates as it would in production). Everything derives from
``--seed`` (and ``--day``), so two runs produce the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import uuid

import numpy as np
import psycopg

TABLE = "conversations"
BASE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # fixed: timestamps do not depend on when it runs
YEAR_S = 365 * 86400
BATCH = 20000
# table bytes (heap + TOAST) per row, measured with PostgreSQL 15: used to turn --mb into rows
HEAP_BYTES_PER_ROW = 655

DDL = f"""
DROP TABLE IF EXISTS {TABLE} CASCADE;
CREATE TABLE {TABLE} (
    id bigserial PRIMARY KEY,
    session_id uuid NOT NULL,
    timestamp timestamptz NOT NULL,
    speaker text NOT NULL,
    content text NOT NULL,
    metadata jsonb,
    archived boolean NOT NULL DEFAULT false,
    archive_file text
);
"""


class Text:
    """Zipf-distributed words with letter frequencies of English; deterministic per seed."""

    def __init__(self, seed: int, n: int = 30000) -> None:
        rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", dtype=np.uint8)
        p = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2,
                      2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07])  # fmt: skip
        p /= p.sum()
        words: set[str] = set()
        while len(words) < n:
            length = int(min(14, 1 + rng.poisson(4.2)))  # mean ~5 letters, like English words
            words.add(bytes(rng.choice(letters, length, p=p)).decode())
        # frequent words tend to be short (the, of, and ...), with exceptions
        ordered = sorted(words)
        rank = np.array([len(w) for w in ordered]) + rng.normal(0, 2.0, len(ordered))
        self.vocab = np.array(ordered, dtype=object)[np.argsort(rank, kind="stable")]
        w = 1.0 / np.arange(1, n + 1) ** 1.07
        self.cdf = np.cumsum(w / w.sum())

    def words(self, rng: np.random.Generator, count: int) -> np.ndarray:
        idx = np.minimum(np.searchsorted(self.cdf, rng.random(count)), len(self.vocab) - 1)
        return self.vocab[idx]


def rows_text(text: Text, rng: np.random.Generator, first_id: int, n: int, t0: float, step: float) -> str:
    """COPY text for rows first_id .. first_id+n-1 (ids are implicit: bigserial, appended)."""
    turn = (first_id - 1 + np.arange(n)) % 20
    user = turn % 2 == 0
    nwords = np.where(
        user,
        rng.integers(5, 61, n),
        np.clip(rng.lognormal(np.log(140), 0.7, n).astype(np.int64), 20, 1500),
    )
    tokens = text.words(rng, int(nwords.sum()))
    # sentence ends every ~12 words: "word word word. Word ..."
    ends = rng.random(len(tokens)) < 1 / 12
    tokens = np.where(ends, tokens + ".", tokens)
    bounds = np.concatenate([[0], np.cumsum(nwords)])
    sess_bytes = rng.bytes(16 * n)
    latency = rng.integers(80, 9000, n)
    out = []
    session = None
    for i in range(n):
        if turn[i] == 0 or session is None:
            session = uuid.UUID(bytes=sess_bytes[16 * i : 16 * i + 16], version=4)
        ts = (BASE + dt.timedelta(seconds=t0 + i * step)).isoformat()
        content = " ".join(tokens[bounds[i] : bounds[i + 1]])
        if user[i]:
            speaker = "user"
            meta = (
                '{"lang": "en", "turn": '
                + str(turn[i])
                + ', "client": "'
                + ("web" if i % 7 else "api")
                + '"}'
            )
        else:
            speaker = "assistant"
            meta = json.dumps({"model": "m-70b" if (first_id + i) % 5 == 0 else "m-7b",
                               "tokens": int(nwords[i] * 1.3), "turn": int(turn[i]),
                               "latency_ms": int(latency[i]), "temperature": 0.7})  # fmt: skip
        out.append(f"{session}\t{ts}\t{speaker}\t{content.capitalize()}\t{meta}\n")
    return "".join(out)


def copy_rows(conn: psycopg.Connection, text: Text, rng: np.random.Generator, first_id: int, n: int,
              t0: float, step: float) -> None:  # fmt: skip
    sql = f"COPY {TABLE} (session_id, timestamp, speaker, content, metadata) FROM STDIN"
    with conn.cursor() as cur, cur.copy(sql) as cp:
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            cp.write(rows_text(text, rng, first_id + start, k, t0 + start * step, step))


def info(conn: psycopg.Connection) -> dict[str, object]:
    row = conn.execute(
        f"SELECT count(*), coalesce(max(id), 0), pg_table_size('{TABLE}'), pg_indexes_size('{TABLE}'), "
        f"pg_database_size(current_database()) FROM {TABLE}"
    ).fetchone()
    assert row is not None
    return {
        "rows": row[0],
        "max_id": row[1],
        "table_bytes": row[2],
        "index_bytes": row[3],
        "database_bytes": row[4],
    }


def cmd_load(a: argparse.Namespace) -> None:
    rows = a.rows or int(a.mb * 1e6 / HEAP_BYTES_PER_ROW)
    text = Text(a.seed)
    rng = np.random.default_rng([a.seed, 0])
    t = time.time()
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(DDL)
        copy_rows(conn, text, rng, 1, rows, 0.0, YEAR_S / rows)
        conn.execute(f"CREATE INDEX ON {TABLE} (timestamp)")
        conn.execute(f"VACUUM (ANALYZE, FREEZE) {TABLE}")
        doc = info(conn)
    doc["load_s"] = round(time.time() - t, 1)
    print(json.dumps(doc))


def cmd_day(a: argparse.Namespace) -> None:
    text = Text(a.seed)
    rng = np.random.default_rng([a.seed, a.day])
    t = time.time()
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        before = info(conn)
        n_ins = round(before["rows"] * a.insert_frac)  # type: ignore[operator]
        n_upd = round(before["rows"] * a.update_frac)  # type: ignore[operator]
        max_id = int(before["max_id"])  # type: ignore[arg-type]
        ids = np.sort(rng.choice(np.arange(1, max_id + 1), n_upd, replace=False)).tolist()
        ratings = rng.integers(1, 6, n_upd).tolist()
        day_start = YEAR_S + (a.day - 1) * 86400.0
        with conn.transaction():
            copy_rows(conn, text, rng, max_id + 1, n_ins, day_start, 86400.0 / max(n_ins, 1))
        t_ins = time.time() - t
        with conn.transaction():
            conn.execute(
                f"UPDATE {TABLE} AS c SET metadata = c.metadata || jsonb_build_object('rating', u.r), "
                "archived = NOT c.archived FROM unnest(%s::bigint[], %s::int[]) AS u(id, r) WHERE c.id = u.id",
                (ids, ratings),
            )
        after = info(conn)
    print(json.dumps({"day": a.day, "inserted": n_ins, "updated": n_upd, "insert_s": round(t_ins, 2),
                      "total_s": round(time.time() - t, 2), "before": before, "after": after}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("dsn")
    p.add_argument("--mb", type=float, default=1500, help="target heap size in MB (10^6 B)")
    p.add_argument("--rows", type=int, default=0, help="exact row count (overrides --mb)")
    p.add_argument("--seed", type=int, default=7)
    p = sub.add_parser("day")
    p.add_argument("dsn")
    p.add_argument("--day", type=int, required=True)
    p.add_argument("--insert-frac", type=float, default=0.02)
    p.add_argument("--update-frac", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=7)
    p = sub.add_parser("info")
    p.add_argument("dsn")
    a = ap.parse_args()
    if a.cmd == "load":
        cmd_load(a)
    elif a.cmd == "day":
        cmd_day(a)
    else:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            print(json.dumps(info(conn)))


if __name__ == "__main__":
    sys.exit(main())
