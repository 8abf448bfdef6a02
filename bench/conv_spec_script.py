"""The spec's conversation archiver (I12, "Conversation Archive"), as written there, for comparison.

    python bench/conv_spec_script.py DSN OUTDIR [--days 90]

``SELECT … WHERE timestamp < cutoff AND archived = FALSE ORDER BY timestamp`` with ``fetchall()``,
group by month in Python, append ``json.dumps`` lines to ``OUTDIR/conversations_YYYY-MM.jsonl.gz``
with ``gzip.open(…, "at")`` (gzip's default level 9), then per month
``UPDATE … SET archived = TRUE, archive_file = … WHERE id = ANY(ids)`` and a commit.  Only the
password-in-DSN and the hard-coded paths differ from the spec.  Prints its phase timings as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--days", type=int, default=90)
    a = ap.parse_args()
    t0 = time.time()
    phases: dict[str, float] = {}
    with psycopg.connect(a.dsn) as conn:
        cutoff_date = datetime.now() - timedelta(days=a.days)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, session_id, timestamp, speaker, content, metadata FROM conversations "
                "WHERE timestamp < %s AND archived = FALSE ORDER BY timestamp",
                (cutoff_date,),
            )
            old_conversations = cur.fetchall()
        phases["fetch_s"] = round(time.time() - t0, 2)
        monthly: dict[str, list[dict[str, Any]]] = {}
        for conv in old_conversations:
            monthly.setdefault(conv[2].strftime("%Y-%m"), []).append(
                {
                    "id": conv[0],
                    "session_id": str(conv[1]),
                    "timestamp": conv[2].isoformat(),
                    "speaker": conv[3],
                    "content": conv[4],
                    "metadata": conv[5],
                }
            )
        write_s = update_s = 0.0
        for month, conversations in monthly.items():
            t = time.time()
            archive_file = a.outdir / f"conversations_{month}.jsonl.gz"
            archive_file.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(archive_file, "at") as f:
                for c in conversations:
                    f.write(json.dumps(c) + "\n")
            write_s += time.time() - t
            t = time.time()
            conv_ids = [c["id"] for c in conversations]
            with conn.cursor() as cur:
                cur.execute(
                    "UPDATE conversations SET archived = TRUE, archive_file = %s WHERE id = ANY(%s)",
                    (str(archive_file), conv_ids),
                )
                conn.commit()
            update_s += time.time() - t
    phases.update(write_gzip_s=round(write_s, 2), update_s=round(update_s, 2))
    print(json.dumps({"rows": len(old_conversations), "months": len(monthly), **phases}))


if __name__ == "__main__":
    main()
