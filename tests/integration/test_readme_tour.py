"""The README's Quick tour, run line by line (issue 17), so the README cannot drift from the CLI.

Every command line of the ```bash block under "## Quick tour" is classified in :data:`TOUR`:
either :class:`Run` (executed, with its README paths mapped under a temporary directory by
:data:`PATHS`, against one throwaway PostgreSQL cluster with sample data, as `make demo` does) or a
string: the reason the line cannot run in a test.  A line that is in neither place fails
:func:`test_every_tour_line_is_classified` until someone classifies it — add it to :data:`TOUR`.

An executed line must exit 0, or the code its own comment promises (``Run(expect=2)`` with
"exit 2" in the comment), and print no ``internal error`` and no traceback.  The commands run as
a newcomer types them: no ``--config`` (``coldkeep init`` writes ``./coldkeep.toml`` in the
working directory), nothing but the README's words, except the placeholders a :class:`Run` names
(ids, a session, a recovery time), which are replaced by real values of this run.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from tests.ckptfiles import write_checkpoint
from tests.helpers import COLDKEEP, base_env

from coldkeep.postgres.cluster import TempCluster, chown_to

README = Path(__file__).resolve().parents[2] / "README.md"
Done = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Run:
    """Execute the line.  ``expect``: its exit code (non-zero only when the line's comment says
    "exit N"); ``sub``: README word -> :class:`Tour` method giving the real value; ``after``:
    :class:`Tour` methods run once the line succeeded, given its output (what the README tells
    the reader to do next, or checks that the line did what its comment says)."""

    expect: int = 0
    sub: dict[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()


#: every command line of the Quick tour (its text before the comment) -> Run, or why it cannot run
TOUR: dict[str, Run | str] = {
    "coldkeep init --repo file:///mnt/hdd/coldkeep --password-file /etc/coldkeep/passphrase": Run(
        after=("check_init_note",)
    ),
    "coldkeep repo init": Run(expect=2, after=("edit_config",)),
    "coldkeep config check": Run(),
    "coldkeep config show --json": Run(),
    "coldkeep doctor": Run(),
    'coldkeep backup /mnt/projects/ICCM/datasets/applications --tag kind=dataset --label "v3.0 before phase 1"': Run(),
    "coldkeep backup --strict /mnt/checkpoints/run-7": Run(),
    "coldkeep backup /home/alice --exclude '*.tmp' --exclude-caches --exclude-file ~/.coldkeep-excludes": Run(),
    "coldkeep snapshots --tag kind=dataset": Run(),
    "coldkeep restore latest --tag kind=dataset --target /tmp/restore --include 'mnt/projects/ICCM/datasets/applications/train/*'": Run(
        after=("check_restore",)
    ),
    "coldkeep restore latest --tag kind=dataset --target /tmp/apps --relative --include 'train/*' --exclude '*.tmp'": Run(
        after=("check_relative",)
    ),
    "coldkeep restore latest --tag kind=dataset --target /tmp/apps --strip-components 5": Run(
        after=("check_stripped",)
    ),
    "coldkeep forget --keep-daily 30 --keep-monthly 12 --dry-run": Run(),
    "coldkeep forget 3f2a9c1e": Run(sub={"3f2a9c1e": "alice_snapshot"}),
    "coldkeep repo prune --lock-wait 600": Run(),
    "coldkeep repo check --read-data": Run(),
    "coldkeep repo copy --to offsite": Run(),  # offsite: a local repository here (S3 has its own tests)
    "coldkeep repo repair --from offsite": Run(),
    "coldkeep repo rebuild-index": Run(),
    "coldkeep repo rebuild-cache": Run(),
    "coldkeep repo unlock": Run(),
    "coldkeep repo key add --new-password-file /etc/coldkeep/passphrase.bob --comment bob": Run(),
    "coldkeep repo key list": Run(),
    "coldkeep repo key remove 1ecb37496b4843aa": Run(sub={"1ecb37496b4843aa": "bob_slot"}),
    "coldkeep repo stats --json": Run(),
    "coldkeep checkpoints list --phase phase3 --json": Run(),
    "coldkeep checkpoints backup": Run(),
    "coldkeep checkpoints archive --dry-run": Run(),
    "coldkeep checkpoints archive": Run(),
    "coldkeep checkpoints recover cet-d-phase3-best": Run(),
    "coldkeep checkpoints recover cet-d-phase4-production --at 2025-10-21T09:00:00Z --to /tmp/prod-then": Run(),
    "coldkeep checkpoints verify cet-d-phase3/best-20251015_092000 --deep": Run(),
    'coldkeep checkpoints promote cet-d-phase4/best-20251015_092000 --reason "eval +2.1%"': Run(),
    'coldkeep checkpoints rollback phase4 --reason "regression in prod"': Run(),
    "coldkeep checkpoints history --phase phase4": Run(),
    "coldkeep checkpoints export cet-d-phase3-best --format tar.zst --to /mnt/projects/ICCM/repro": Run(),
    'coldkeep datasets snapshot --version v3.0 --label "before phase 1"': Run(after=("change_dataset",)),
    "coldkeep datasets snapshot --version v3.1 --if-changed": Run(),
    "coldkeep datasets status": Run(),
    "coldkeep datasets list": Run(),
    "coldkeep datasets show v3.0 --checksums": Run(),
    "coldkeep datasets diff v3.0 v3.1": Run(),
    "coldkeep datasets restore v3.0 --to /tmp/v3.0": Run(),
    "coldkeep datasets verify v3.0 --against /tmp/v3.0": Run(),
    "coldkeep datasets export v3.0 --format tar.zst --to /mnt/hdd/dataset_snapshots": Run(
        after=("check_export",)
    ),
    (
        "coldkeep repro create --name iccm_reproducibility_package_v1.0 --dataset v3.0 --models "
        "cet-d-phase3-best /mnt/checkpoints/run-7 --code /mnt/projects/ICCM/code@v1.0 --results "
        "/mnt/projects/ICCM/validation/results --training-logs '/mnt/projects/ICCM/training/*/training.log' "
        "--python /usr/bin/python3 --out /mnt/hdd/reproducibility_package"
    ): Run(),
    "coldkeep repro list": Run(),
    "coldkeep repro verify iccm_reproducibility_package_v1.0": Run(),
    "coldkeep repro restore iccm_reproducibility_package_v1.0 --to /tmp/repro": Run(),
    "coldkeep status": Run(),
    "coldkeep report --html /tmp/coldkeep-report.html": Run(after=("check_report",)),
    "coldkeep pg setup --apply": Run(after=("restart_server",)),
    "coldkeep pg check": Run(),
    "coldkeep pg receive-wal --synchronous": "a service that streams until stopped (tests/integration/test_pg_receive.py runs it)",
    "coldkeep pg setup --apply --synchronous": Run(after=("check_held_back",)),
    "coldkeep pg backup --label nightly": Run(after=("mark_recovery_time",)),
    "coldkeep pg backups": Run(),
    "coldkeep pg verify --all": Run(),
    "coldkeep pg restore-test": Run(),
    "coldkeep pg restore --target-dir /var/lib/postgresql/15/restored --time 2026-11-26T09:30:00+00:00 --start": Run(
        sub={"2026-11-26T09:30:00+00:00": "recovery_time"}, after=("check_and_stop_restored",)
    ),
    "coldkeep pg expire --dry-run": Run(),
    "coldkeep drill --scenario database": Run(),
    "coldkeep drill --from-copy offsite": Run(),
    "coldkeep conversations init-schema": Run(),
    "coldkeep conversations archive --dry-run": Run(),
    "coldkeep conversations archive --purge": Run(),
    "coldkeep conversations get --session 5b3c0e2e-…": Run(
        sub={"5b3c0e2e-…": "archived_session"}, after=("check_rows_table",)
    ),
    "coldkeep conversations compact --month 2025-01": Run(),
    "coldkeep conversations restore --month 2025-01": Run(),
    "coldkeep conversations verify": Run(),
    "coldkeep conversations stats": Run(after=("check_archive_lines",)),
    "zstdcat /mnt/hdd/conversation_archives/2025-01/*.jsonl.zst | jq -c '{id, speaker, content}'": (
        "a shell pipeline through jq, which is no test dependency; check_archive_lines (after "
        "`conversations stats`) checks what it shows: JSON lines with id, speaker and content"
    ),
    "coldkeep drill --scenario full": Run(after=("check_full_drill",)),
}

#: README path prefix -> where it is in the test (relative to the temporary root); any other
#: absolute path in an executed line fails the test until it is mapped here
PATHS: dict[str, str] = {
    "/mnt/": "mnt/",
    "/etc/coldkeep/": "etc/coldkeep/",
    "/tmp/": "tmp/",
    "/home/alice": "home/alice",
    "~/": "home/alice/",
    "/var/lib/postgresql/": "var/lib/postgresql/",
}

#: paths of this machine the README names as they are (the interpreter `repro create --python` asks)
SYSTEM_PATHS = ("/usr/bin/python3",)

#: a session of archived January 2025 rows (the README's `5b3c0e2e-…`)
SESSION = "5b3c0e2e-0000-4000-8000-000000000001"


@dataclass
class Line:
    command: str  # the text before the comment
    comment: str  # its comment and the comment lines under it


def tour_lines(readme: str) -> list[Line]:
    """The command lines of the first ```bash block under "## Quick tour"; a line holding only a
    comment continues the comment of the command above it."""
    section = readme.split("\n## Quick tour", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines: list[Line] = []
    for raw in block.splitlines():
        text = raw.strip()
        if not text:
            continue
        if text.startswith("#"):
            if lines:
                lines[-1].comment += " " + text.lstrip("# ")
            continue
        command, comment = split_comment(text)
        lines.append(Line(command, comment))
    return lines


def split_comment(text: str) -> tuple[str, str]:
    """``text`` cut at its first ``#`` outside quotes that starts a word (a shell comment)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def map_arg(arg: str, root: Path, previous: str) -> str:
    """A README argument as the test runs it: paths under ``root``; stored-path patterns
    (``mnt/projects/…``) and ``--strip-components N`` follow the extra leading components."""
    if arg.startswith("file://"):
        return "file://" + map_arg(arg.removeprefix("file://"), root, previous)
    if previous == "--strip-components":
        return str(int(arg) + len(root.parts) - 1)
    for readme, local in PATHS.items():
        if arg.startswith(readme):
            return f"{root}/{local}{arg[len(readme) :]}"
        if arg.startswith(readme.lstrip("/")) and readme.startswith("/mnt/"):  # a stored path
            return f"{root}/{local}{arg[len(readme) - 1 :]}".lstrip("/")
    if arg in SYSTEM_PATHS:
        return arg
    assert not arg.startswith(("/", "~")), f"{arg}: a README path with no entry in PATHS"
    return arg


def test_every_tour_line_is_classified() -> None:
    lines = tour_lines(README.read_text(encoding="utf-8"))
    commands = [line.command for line in lines]
    unclassified = [c for c in commands if c not in TOUR]
    assert unclassified == [], "Quick tour lines not in TOUR (run them, or say why not):\n" + "\n".join(
        unclassified
    )
    gone = [c for c in TOUR if c not in commands]
    assert gone == [], "TOUR names lines the Quick tour no longer has:\n" + "\n".join(gone)
    for line in lines:
        spec = TOUR[line.command]
        if isinstance(spec, Run) and spec.expect:
            assert f"exit {spec.expect}" in line.comment, f"{line.command}: exit {spec.expect} undocumented"
        if isinstance(spec, Run):
            assert all(word in line.command for word in spec.sub), line.command


def test_map_arg() -> None:
    root = Path("/tmp/t")
    assert map_arg("file:///mnt/hdd/coldkeep", root, "--repo") == "file:///tmp/t/mnt/hdd/coldkeep"
    assert map_arg("mnt/projects/x/*", root, "--include") == "tmp/t/mnt/projects/x/*"
    assert map_arg("~/.coldkeep-excludes", root, "--exclude-file") == "/tmp/t/home/alice/.coldkeep-excludes"
    assert map_arg("5", root, "--strip-components") == "7"
    assert map_arg("train/*", root, "--include") == "train/*"
    with pytest.raises(AssertionError):
        map_arg("/srv/data", root, "backup")


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Tour:
    root: Path
    cluster: TempCluster
    executable: str  # a coldkeep the server's OS user can run (archive_command, restore_command)
    values: dict[str, str] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.root / "work"

    def path(self, readme_path: str) -> Path:
        return Path(map_arg(readme_path, self.root, ""))

    def env(self) -> dict[str, str]:
        return base_env(
            {"COLDKEEP_CACHE_DIR": str(self.root / "cache"), "COLDKEEP_EXECUTABLE": self.executable}
        )

    def coldkeep(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COLDKEEP, *args], cwd=self.work, env=self.env(), capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip

    def json(self, *args: str) -> Any:
        proc = self.coldkeep("--json", *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    # -- sample data, made before the tour ---------------------------------------------------------

    def prepare(self) -> None:
        os.chmod(self.root, 0o755)  # the server's OS user reads the config and the passphrase
        self.work.mkdir()
        secrets = self.path("/etc/coldkeep/")
        secrets.mkdir(parents=True)
        for name, words in (("passphrase", "correct horse battery staple"), ("passphrase.bob", "bob's own")):
            (secrets / name).write_text(words + "\n")
            os.chmod(secrets / name, 0o600)
            chown_to(secrets / name, self.cluster.os_user)
        apps = self.path("/mnt/projects/ICCM/datasets/applications")
        for i in range(12):
            app = apps / ("train" if i < 9 else "holdout") / f"app{i:02d}"
            app.mkdir(parents=True)
            (app / "metadata.json").write_text(json.dumps({"name": f"app{i:02d}"}))
            (app / "main.py").write_text(f"print({i})\n" * 200)
        (apps / "train" / "app00" / "scratch.tmp").write_text("left out by --exclude '*.tmp'\n")
        models = self.path("/mnt/nvme/models")
        for seed, name in enumerate(("cet-d-phase3/checkpoint-20251010_000000", "cet-d-phase3/best-20251015_092000",
                                     "cet-d-phase4/production-20251001_000000", "cet-d-phase4/best-20251015_092000")):  # fmt: skip
            write_checkpoint(models / name, seed=seed)
        for out in ("/mnt/hdd/dataset_snapshots", "/mnt/hdd/reproducibility_package"):  # exports go there
            self.path(out).mkdir(parents=True)
        code = self.path("/mnt/projects/ICCM/code")
        code.mkdir(parents=True)
        (code / "train.py").write_text("print('train')\n")
        git = ["git", "-C", str(code), "-c", "user.name=lab", "-c", "user.email=lab@example.org"]
        for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "v1.0"], ["tag", "v1.0"]):
            subprocess.run([*git, *step], check=True, capture_output=True)
        results = self.path("/mnt/projects/ICCM/validation/results")
        results.mkdir(parents=True)
        (results / "metrics.json").write_text(json.dumps({"accuracy": 0.91}))
        log = self.path("/mnt/projects/ICCM/training/phase3/training.log")
        log.parent.mkdir(parents=True)
        log.write_text("epoch 1 loss 0.5\n")
        run7 = self.path("/mnt/checkpoints/run-7")
        run7.mkdir(parents=True)
        (run7 / "model.safetensors").write_bytes(os.urandom(300_000))
        alice = self.path("/home/alice")
        (alice / ".cache" / "pip").mkdir(parents=True)
        (alice / ".cache" / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
        (alice / ".cache" / "pip" / "wheel").write_bytes(b"x" * 5000)
        (alice / "notes.md").write_text("notes\n")
        (alice / "run.tmp").write_text("temporary\n")
        (alice / "train.log").write_text("loss 0.1\n")
        (alice / ".coldkeep-excludes").write_text("# alice's\n*.log\n")
        restored = self.path("/var/lib/postgresql/15")
        restored.mkdir(parents=True)
        chown_to(restored, self.cluster.os_user)
        chown_to(restored.parent, self.cluster.os_user)
        self.cluster.sql("CREATE DATABASE iccm")
        self.cluster.sql(
            "CREATE TABLE conversations (id bigserial PRIMARY KEY, session_id uuid, timestamp timestamptz,"
            " speaker text, content text, metadata jsonb);"
            " INSERT INTO conversations (session_id, timestamp, speaker, content, metadata)"
            f" SELECT CASE WHEN g <= 20 THEN '{SESSION}'::uuid ELSE gen_random_uuid() END,"
            " timestamptz '2025-01-02 00:00+00' + g * interval '3 hours',"
            " CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END, repeat('hello ', 20), '{}'"
            " FROM generate_series(1, 600) g;"
            " INSERT INTO conversations (session_id, timestamp, speaker, content, metadata)"
            " SELECT gen_random_uuid(), now() - g * interval '1 hour', 'user', 'recent', '{}'"
            " FROM generate_series(1, 50) g",
            "iccm",
        )

    # -- what the README tells the reader to do between lines, and checks (Run.after) -------------

    def check_init_note(self, proc: Done) -> None:
        """No server at init's default DSN here: the note says how to enable [postgres] later (not
        "rerun init", which refuses to overwrite the config)."""
        assert "enabled = true in coldkeep.toml" in proc.stderr, proc.stderr
        assert "rerun" not in proc.stderr, proc.stderr

    def check_held_back(self, proc: Done) -> None:
        """No receiver streams here: synchronous_standby_names is shown as held back, and the
        summary does not claim everything was applied."""
        assert "(not applied: no receiver named coldkeep is streaming" in proc.stdout, proc.stdout
        assert "applied except synchronous_standby_names (see the warning)" in proc.stdout, proc.stdout
        assert "pg receive-wal --synchronous" in proc.stderr, proc.stderr

    def check_rows_table(self, proc: Done) -> None:
        """Every row says where it came from, and every column is visible in 80 columns."""
        lines = proc.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), proc.stdout
        assert re.match(r"id\s+timestamp\s+speaker\s+source\s+content", lines[0].strip()), lines[0]
        rows = [line for line in lines if re.match(r"\d+\s+2025-01-", line)]
        assert len(rows) == 20 and all(" archive " in row for row in rows), proc.stdout

    def edit_config(self, _proc: Done) -> None:
        """What the comment under `repo init` says: [postgres] of this server, [conversations],
        [datasets] and [checkpoints] enabled (settle_seconds 0: the sample checkpoints were just
        written), an offsite copy (a second local repository here)."""
        config = self.work / "coldkeep.toml"
        text = config.read_text(encoding="utf-8")
        text = set_keys(text, "postgres", {
            "enabled": "true", "dsn": json.dumps(self.cluster.dsn_for("iccm")),
            "data_dir": json.dumps(str(self.cluster.data_dir)), "bin_dir": json.dumps(str(self.cluster.bin_dir)),
            "os_user": json.dumps(self.cluster.os_user),
        })  # fmt: skip
        text = set_keys(text, "conversations", {
            "enabled": "true", "archive_dir": json.dumps(str(self.path("/mnt/hdd/conversation_archives"))),
        })  # fmt: skip
        text = set_keys(text, "datasets", {
            "enabled": "true", "root": json.dumps(str(self.path("/mnt/projects/ICCM/datasets/applications"))),
            "export_dir": json.dumps(str(self.path("/mnt/hdd/dataset_snapshots"))),
        })  # fmt: skip
        text = set_keys(text, "checkpoints", {
            "enabled": "true", "root": json.dumps(str(self.path("/mnt/nvme/models"))), "settle_seconds": "0",
        })  # fmt: skip
        text += f'\n[repository.copies.offsite]\nurl = "file://{self.path("/mnt/offsite")}"\n'
        config.write_text(text, encoding="utf-8")

    def change_dataset(self, _proc: Done) -> None:
        """The data changes before the next training run, so `--if-changed` records v3.1."""
        app = self.path("/mnt/projects/ICCM/datasets/applications/train/app01")
        (app / "metadata.json").write_text(json.dumps({"name": "app01", "curated": True}))

    def check_export(self, _proc: Done) -> None:
        """The export and its .sha256, which `sha256sum -c` accepts."""
        out = self.path("/mnt/hdd/dataset_snapshots")
        (archive,) = out.glob("iccm_dataset_v3.0_*.tar.zst")
        check = subprocess.run(
            ["sha256sum", "-c", archive.name + ".sha256"], cwd=out, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

    def check_report(self, _proc: Done) -> None:
        """The report ticks the boxes the tour's own runs prove, each linked to its run record."""
        page = self.path("/tmp/coldkeep-report.html").read_text()
        for item in ("weekly-postgres-backup", "weekly-restore-test", "weekly-checksums",
                     "weekly-checkpoints-archived", "weekly-conversations-backed-up", "monthly-database-restore"):  # fmt: skip
            assert re.search(f'id="{item}" data-state="ticked"', page), item
        for anchor in re.findall(r'href="#(run-[^"]+)"', page):
            assert f'id="{anchor}"' in page

    def restart_server(self, _proc: Done) -> None:
        """`pg setup --apply` says archive_mode needs a restart."""
        self.cluster.stop()
        self.cluster.start()

    def mark_recovery_time(self, _proc: Done) -> None:
        """A moment after the base backup, then a change after it, its WAL archived."""
        time.sleep(1.1)
        moment = self.cluster.sql("SELECT now()")[0][0]
        assert isinstance(moment, dt.datetime)
        self.values["recovery_time"] = moment.isoformat()
        time.sleep(1.1)
        self.cluster.sql("INSERT INTO conversations (timestamp, speaker, content) SELECT now(), 'user', 'later'"
                         " FROM generate_series(1, 7)", "iccm")  # fmt: skip
        proc = self.coldkeep("pg", "check")
        assert proc.returncode == 0, proc.stderr

    def check_and_stop_restored(self, proc: Done) -> None:
        """The server `--start` left running has none of the rows written after the recovery time."""
        assert re.search(r"reached LSN [0-9A-F]+/[0-9A-F]+ on timeline 2 \(", proc.stdout), proc.stdout
        restored = self.path("/var/lib/postgresql/15/restored")
        server = TempCluster(run_dir(restored), bin_dir=self.cluster.bin_dir, data_dir=restored,
                             port=port_of(restored))  # fmt: skip
        try:
            counts = server.sql(
                "SELECT count(*), count(*) FILTER (WHERE content = 'later') FROM conversations", "iccm"
            )
            assert counts[0] == (650, 0), counts
        finally:
            server.stop(mode="fast")

    def check_restore(self, _proc: Done) -> None:
        landed = self.path("/tmp/restore") / str(
            self.path("/mnt/projects/ICCM/datasets/applications")
        ).lstrip("/")
        assert sorted(os.listdir(landed)) == ["train"], os.listdir(landed)

    def check_relative(self, _proc: Done) -> None:
        apps = self.path("/tmp/apps")
        assert sorted(os.listdir(apps)) == ["train"]
        assert not (apps / "train" / "app00" / "scratch.tmp").exists()
        assert (apps / "train" / "app00" / "main.py").read_text().startswith("print(0)")

    def check_stripped(self, _proc: Done) -> None:
        assert sorted(os.listdir(self.path("/tmp/apps"))) == ["holdout", "train"]

    def check_archive_lines(self, _proc: Done) -> None:
        files = sorted(self.path("/mnt/hdd/conversation_archives/2025-01").glob("*.jsonl.zst"))
        assert files, "no archive files where the README's zstdcat line looks"
        for file in files:
            with open(file, "rb") as fh:
                data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
            for line in data.decode().splitlines():
                assert {"id", "speaker", "content"} <= json.loads(line).keys()

    def check_full_drill(self, proc: Done) -> None:
        """Every scenario ran (the tour configured them all) and passed, the newest drill recorded."""
        (run,) = [r for r in self.json("runs", "--job", "drill") if r["target"] == "full"]
        assert run["result"] == "ok", run
        from coldkeep.ops.drill import PARTS

        shown = proc.stdout
        for part in PARTS:
            assert f"  {part}: passed in " in shown, shown

    # -- placeholders (Run.sub) ------------------------------------------------------------------

    def alice_snapshot(self) -> str:
        home = str(self.path("/home/alice"))
        return next(s["short_id"] for s in self.json("snapshots") if s["paths"] == [home])

    def bob_slot(self) -> str:
        return next(s["id"] for s in self.json("repo", "key", "list") if s["comment"] == "bob")

    def recovery_time(self) -> str:
        return self.values["recovery_time"]

    def archived_session(self) -> str:
        return SESSION


def set_keys(text: str, section: str, values: dict[str, str]) -> str:
    """``text`` (a TOML file as ``coldkeep init`` writes it) with ``key = value`` set in
    ``[section]``; each key must be there already."""
    out, current, done = [], "", set()
    for line in text.splitlines(keepends=True):
        header = re.match(r"\[([^\]]+)\]", line)
        if header:
            current = header.group(1)
        key = line.split("=", 1)[0].strip()
        if current == section and "=" in line and key in values:
            line = f"{key} = {values[key]}\n"
            done.add(key)
        out.append(line)
    assert done == set(values), (section, set(values) - done)
    return "".join(out)


def run_dir(data_dir: Path) -> Path:
    """Where `pg restore --start` keeps the socket and log of the server it started."""
    return data_dir.with_name(data_dir.name + ".run")


def port_of(data_dir: Path) -> int:
    """The port of the server running on ``data_dir`` (line 4 of postmaster.pid)."""
    return int((data_dir / "postmaster.pid").read_text().splitlines()[3])


@pytest.fixture
def tour(pg_cluster: TempCluster, pg_coldkeep: str) -> Iterator[Tour]:
    root = Path(tempfile.mkdtemp(prefix="coldkeep-tour-"))
    tour = Tour(root, pg_cluster, pg_coldkeep)
    try:
        tour.prepare()
        yield tour
    finally:
        restored = tour.path("/var/lib/postgresql/15/restored")
        if (restored / "postmaster.pid").exists():  # a failed run left the restored server up
            TempCluster(run_dir(restored), bin_dir=pg_cluster.bin_dir, data_dir=restored).stop(
                mode="immediate"
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.pg
@pytest.mark.slow
def test_quick_tour_runs(tour: Tour) -> None:
    """Each runnable Quick tour line, in order, exits as documented, with no internal error."""
    transcript: list[str] = []
    for line in tour_lines(README.read_text(encoding="utf-8")):
        spec = TOUR[line.command]  # test_every_tour_line_is_classified says which are missing
        if not isinstance(spec, Run):
            continue
        command = line.command
        for word, method in spec.sub.items():
            command = command.replace(word, getattr(tour, method)())
        words = shlex.split(command)
        assert words[0] == "coldkeep", command
        args = [map_arg(arg, tour.root, prev) for prev, arg in itertools.pairwise(words)]
        proc = tour.coldkeep(*args)
        transcript.append(f"$ {line.command}\n{proc.stdout}{proc.stderr}-> exit {proc.returncode}")
        said = proc.stdout + proc.stderr
        assert proc.returncode == spec.expect and "internal error" not in said and "Traceback" not in said, (
            f"`{line.command}` exited {proc.returncode} (README: {spec.expect}) as\n  coldkeep {shlex.join(args)}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}\n"
            f"server log: {tour.cluster.log_text()[-2000:]}"
        )
        for method in spec.after:
            getattr(tour, method)(proc)
    print("\n\n".join(transcript))
