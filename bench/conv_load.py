"""Create and fill a conversations table with synthetic rows (the spec's schema), via COPY.

    .venv/bin/python bench/conv_load.py DSN [--rows 1000000] [--months 12] [--seed 7]
        [--order random|chronological] [--table conversations]

Rows: sessions of ~20 turns, speakers alternating user/assistant, content of ~500 bytes drawn
from a Zipf-like vocabulary, a small jsonb ``metadata`` object (with a float), timestamps over
the ``--months`` x 30.44 days before now.  ``--order random`` (default) makes ids unrelated to
timestamps (every page holds rows of every month: the hardest case for a month-by-month archive);
``chronological`` is what an application that inserts as it goes produces.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid

import numpy as np
import psycopg

DDL = """
DROP TABLE IF EXISTS {t} CASCADE;
CREATE TABLE {t} (
    id bigserial PRIMARY KEY,
    session_id uuid,
    timestamp timestamptz,
    speaker text,
    content text,
    metadata jsonb,
    archived boolean DEFAULT false,
    archive_file text
);
"""


def vocabulary(rng: np.random.Generator, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    freq = np.array([8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.2, 0.8, 4.0, 2.4, 6.7, 7.5, 1.9,
                     0.1, 6.0, 6.3, 9.1, 2.8, 1.0, 2.4, 0.2, 2.0, 0.1])  # fmt: skip
    freq /= freq.sum()
    words: set[str] = set()
    while len(words) < n:
        length = int(rng.integers(2, 11))
        words.add(bytes(rng.choice(alphabet, length, p=freq)).decode())
    vocab = np.array(sorted(words), dtype=object)
    rng.shuffle(vocab)
    weights = 1.0 / np.arange(1, n + 1) ** 1.1
    return vocab, np.cumsum(weights / weights.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--order", choices=["random", "chronological"], default="random")
    ap.add_argument("--table", default="conversations")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    vocab, cdf = vocabulary(rng)
    now = dt.datetime.now(dt.UTC)
    span = a.months * 30.44 * 86400
    started = time.time()
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(DDL.format(t=a.table).encode())
        copy_sql = f"COPY {a.table} (session_id, timestamp, speaker, content, metadata) FROM STDIN"
        with conn.cursor() as cur, cur.copy(copy_sql.encode()) as copy:
            step = 20000
            session = uuid.uuid4()
            for start in range(0, a.rows, step):
                n = min(step, a.rows - start)
                nwords = rng.integers(45, 92, n)
                picks = np.minimum(np.searchsorted(cdf, rng.random(int(nwords.sum()))), len(vocab) - 1)
                tokens = vocab[picks]
                bounds = np.concatenate([[0], np.cumsum(nwords)])
                if a.order == "random":
                    ages = rng.uniform(0, span, n)
                else:
                    ages = span * (1 - (start + np.arange(n)) / a.rows)
                lines = []
                for i in range(n):
                    row = start + i
                    if row % 20 == 0:
                        session = uuid.UUID(bytes=rng.bytes(16), version=4)
                    ts = (now - dt.timedelta(seconds=float(ages[i]))).isoformat()
                    speaker = "user" if row % 2 == 0 else "assistant"
                    content = " ".join(tokens[bounds[i] : bounds[i + 1]])
                    meta = json.dumps(
                        {"model": "m-7b" if row % 3 else "m-70b", "tokens": int(nwords[i] * 1.3),
                         "turn": row % 20, "temperature": 0.7, "latency_ms": int(ages[i]) % 5000}
                    )  # fmt: skip
                    lines.append(f"{session}\t{ts}\t{speaker}\t{content}\t{meta}\n")
                copy.write("".join(lines))
        conn.execute(f"CREATE INDEX ON {a.table} (timestamp)".encode())
        conn.execute(f"VACUUM ANALYZE {a.table}".encode())
        row = conn.execute(
            f"SELECT count(*), pg_total_relation_size('{a.table}'), avg(octet_length(content))::int "
            f"FROM {a.table}".encode()
        ).fetchone()
    assert row is not None
    print(f"loaded {row[0]} rows ({row[1] / 1e6:.0f} MB with indexes, content {row[2]} bytes on average) "
          f"in {time.time() - started:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
