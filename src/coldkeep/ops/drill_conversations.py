"""The conversations drill: ``coldkeep drill --scenario conversations``.

1. ``conversations verify`` with the repository check (:func:`coldkeep.conversations.access.verify`
   with ``check_repo``: every ledger batch against its file, every archived row in exactly one
   batch, every stored batch read back from the repository against the ledger's SHA-256).
2. One archived session chosen at random: a random ledger batch is read from the repository (the
   local archive file when it was never stored), a random row of it with a session names the
   session, ``conversations get --session`` (:func:`~coldkeep.conversations.access.get_rows`)
   retrieves it, and every row of that session in the batch must come back equal to its archived
   line (the six fields, compared as JSON).

With ``--from-copy``, both read the copy.  The ledger lives in the database: when that does not
answer from a copy (the total-loss case) the scenario is skipped, saying so; on the live system
an unreachable database fails it.  No ``[conversations]`` section: skipped.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from coldkeep.config import Config
from coldkeep.conversations import access, db
from coldkeep.conversations.files import BatchReader
from coldkeep.conversations.ledger import ledger_files
from coldkeep.errors import ColdkeepError, IntegrityError, PostgresUnreachable
from coldkeep.ops.drill_common import DrillResult, config_reading, make_scratch
from coldkeep.repository.repository import Repository

#: the fields of an archived line (what a retrieved row is compared on)
FIELDS = ("id", "session_id", "timestamp", "speaker", "content", "metadata")


def drill_conversations(
    config: Config,
    repo: Repository,
    result: DrillResult,
    copy_name: str | None,
    scratch: Path | None,
    rng: random.Random,
) -> None:
    """The conversations scenario (see the module doc) into ``result``."""
    if not config.conversations.in_use:
        result.skip("no [conversations] section")
        return
    conv_config = config_reading(config, copy_name)
    t = time.monotonic()
    try:
        verified = access.verify(conv_config, check_repo=True)
    except PostgresUnreachable as exc:
        if copy_name:
            result.skip(f"the conversations database does not answer ({exc.message}): its ledger is "
                        "needed to check the archive")  # fmt: skip
        else:
            result.add("conversations verify", False, exc.message)
        return
    except ColdkeepError as exc:
        result.add("conversations verify", False, exc.message)
        return
    result.steps["verify"] = round(time.monotonic() - t, 3)
    problems = verified["problems"]
    result.add("conversations verify", not problems,
               "; ".join(problems) if problems else
               f"{verified['batches']} batches, {verified['rows_in_ledger']} archived rows, "
               f"{verified['batches'] - verified['not_in_repository']} stored in the {result.source}")  # fmt: skip
    t = time.monotonic()
    base = make_scratch(config, scratch)
    try:
        _random_session(conv_config, repo, result, base, rng)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result.steps["session"] = round(time.monotonic() - t, 3)


def _random_session(
    config: Config, repo: Repository, result: DrillResult, base: Path, rng: random.Random
) -> None:
    with db.connect(config.postgres, "drill") as conn:
        batches = ledger_files(conn, db.open_target(conn, config.conversations))
    if not batches:
        result.add("archived session", True, "nothing archived yet")
        return
    name = rng.choice(sorted(batches))
    batch = batches[name]
    try:
        lines = _batch_lines(config, repo, batch, base)
    except ColdkeepError as exc:
        result.add(f"archived session (batch {name})", False, exc.message)
        return
    with_session = [doc for doc in lines.values() if doc.get("session_id")]
    if not with_session:
        result.add(f"archived session (batch {name})", True, "no row of the batch has a session")
        return
    session = str(rng.choice(with_session)["session_id"])
    result.recovered["session"] = {"session_id": session, "batch": name}
    want = {rid: doc for rid, doc in lines.items() if doc.get("session_id") == session}
    try:
        got = {int(r["id"]): r for r in access.get_rows(config, session=session)["rows"]}
    except ColdkeepError as exc:
        result.add(f"archived session {session}", False, f"batch {name}: {exc.message}")
        return
    missing = sorted(set(want) - set(got))
    differ = sorted(rid for rid in set(want) & set(got) if {k: got[rid].get(k) for k in FIELDS} != want[rid])
    bad = [f"row {rid} not retrieved" for rid in missing] + [
        f"row {rid} differs from its archive" for rid in differ
    ]
    result.add(f"archived session {session}", not bad,
               f"batch {name}: " + ("; ".join(bad[:10]) if bad else
                                   f"{len(want)} archived rows retrieved, each equal to its archived line"))  # fmt: skip


def _batch_lines(
    config: Config, repo: Repository, batch: dict[str, Any], base: Path
) -> dict[int, dict[str, Any]]:
    """id -> archived row of ``batch``: its repository copy (the local file when it was never
    stored), its SHA-256 checked against the ledger's."""
    if batch.get("repo_object"):
        _meta, data = repo.get_named(str(batch["repo_object"]))
        path = base / Path(str(batch["file"])).name
        path.write_bytes(data)
        where = f"its repository copy {batch['repo_object']}"
    else:
        path = Path(config.conversations.archive_dir) / str(batch["file"])
        where = f"the local file {path} (never stored in the repository)"
    reader = BatchReader(path, str(batch["format"]))
    out: dict[int, dict[str, Any]] = {}
    try:
        for line in reader.lines():
            doc = json.loads(line)
            out[int(doc["id"])] = {k: doc.get(k) for k in FIELDS}
    except Exception as exc:  # any decoder's error (zstd, gzip, JSON): the archive is damaged
        raise _damaged(batch, where, str(exc)) from None
    if reader.sha256 != batch.get("sha256"):
        raise _damaged(batch, where, "its SHA-256 is not the ledger's")
    return out


def _damaged(batch: dict[str, Any], where: str, why: str) -> ColdkeepError:
    return IntegrityError(f"batch file {batch['file']}: {where} is unreadable: {' '.join(why.split())[:200]}")
