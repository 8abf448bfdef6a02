"""Metrics (coldkeep.ops.metrics): after a job the node_exporter textfile, a real Pushgateway
(Debian's prometheus-pushgateway) and `coldkeep exporter` show every metric with the same value;
a scrape is served from memory (it never recomputes)."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import Site, make_tree
from tests.promsite import exporter_process, get, pushgateway

from coldkeep.cli.recorded import DEFAULT_TEXTFILE_DIR
from coldkeep.config import MetricsConfig, parse_text
from coldkeep.ops.exporter import Exporter, MetricsSource
from coldkeep.ops.runs import RunRecord, write_record
from coldkeep.repository.crypto import KdfParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
#: differs between outputs by design (when each was computed) or added by the Pushgateway
_VOLATILE = {"coldkeep_metrics_generated_timestamp_seconds", "push_time_seconds", "push_failure_time_seconds"}


def samples(text: str, *, drop: tuple[str, ...] = ()) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in _VOLATILE:
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in drop))
            out[(s.name, labels)] = s.value
    return out


def metrics_site(tmp_path: Path, extra: str = "") -> Site:
    site = Site(tmp_path / "site")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    with site.config.open("a") as f:
        f.write(f'[metrics]\ntextfile_dir = "{textfile}"\n{extra}')
    site.ok("repo", "init")
    return site


def test_textfile_pushgateway_and_exporter_agree_after_each_job(tmp_path: Path) -> None:
    with pushgateway(tmp_path) as gateway:
        alloc = tmp_path / "alloc"
        alloc.mkdir()
        (alloc / "a.bin").write_bytes(b"x" * 50_000)
        phase = tmp_path / "models" / "cet-d-phase1"
        (phase / "checkpoint-20251001_153000").mkdir(parents=True)  # a hot checkpoint, by its name
        site = metrics_site(
            tmp_path,
            f'pushgateway_url = "{gateway}"\njob = "coldkeep"\n'
            f'[storage.hot]\npath = "{tmp_path}"\ncapacity = "10MB"\n'
            f'[storage.hot.allocations.data]\npath = "{alloc}"\nsize = "1MB"\n'
            '[storage.cold]\npath = "/"\ncapacity = "1TB"\n'
            f'[checkpoints]\nroot = "{tmp_path / "models"}"\n',
        )
        days_ago = [(datetime.now(UTC) - timedelta(days=d)).isoformat() for d in (2, 1)]
        site.ok("storage", env={"COLDKEEP_NOW": days_ago[0]})
        (alloc / "b.bin").write_bytes(b"y" * 50_000)
        site.ok("storage", env={"COLDKEEP_NOW": days_ago[1]})  # growth: two samples a day apart
        # another pusher's metric in the same group: an add (POST) leaves it alone
        group = {"instance": socket.gethostname()}
        reg = CollectorRegistry()
        Gauge("lab_other_metric", "someone else's", registry=reg).set(7)
        push_to_gateway(gateway, job="coldkeep", registry=reg, grouping_key=group)

        data = make_tree(tmp_path / "data", seed=9, small_files=3, big_sizes=(2000,))
        ok = site.json("backup", str(data))
        assert site.run("backup", str(tmp_path / "missing")).returncode != 0  # a failure after the success
        textfile = samples((tmp_path / "textfile" / "coldkeep.prom").read_text())
        runs = [r for r in site.json("runs") if r["job"] != "storage"]
        good, bad = runs[0], runs[1]

        t = ("type", "backup")
        assert textfile[("backup_last_success_timestamp", (t,))] == pytest.approx(
            datetime.fromisoformat(good["end"].replace("Z", "+00:00")).timestamp()
        )
        assert textfile[("backup_size_bytes", (t,))] == ok["logical_bytes"]
        assert textfile[("backup_duration_seconds", (t,))] == pytest.approx(good["duration_s"], abs=0.002)
        assert textfile[("backup_failures_total", (t,))] == 1
        assert textfile[("coldkeep_job_last_run_success", (t,))] == 0
        assert textfile[("coldkeep_job_runs_total", (("result", "failed"), t))] == 1
        assert textfile[("coldkeep_job_new_stored_bytes", (t,))] == ok["new_stored_bytes"]
        assert textfile[("coldkeep_repository_up", ())] == 1
        assert bad["result"] == "failed"
        # the storage and service figures are among them (and so compared below)
        pool = (("allocation", "data"), ("location", "hot"), ("path", str(alloc)))
        assert textfile[("coldkeep_storage_growth_bytes_per_day", pool)] > 0
        assert textfile[("coldkeep_storage_days_until_full", pool)] > 0
        assert textfile[("coldkeep_checkpoints", (("place", "hot"), ("type", "checkpoint")))] == 1

        pushed = get(gateway + "/metrics")
        in_group = "\n".join(
            line for line in pushed.splitlines() if line.startswith("#") or 'job="coldkeep"' in line
        )
        at_gateway = samples(in_group, drop=("job", "instance"))
        assert at_gateway.pop(("lab_other_metric", ())) == 7  # add semantics: still there
        assert at_gateway == textfile

        with exporter_process(site, "--refresh", "3600") as url:
            assert samples(get(url)) == textfile


@pytest.fixture()
def thousand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLDKEEP_CACHE_DIR", str(tmp_path / "cache"))
    repo = Repository.init(
        LocalBackend(tmp_path / "repo"),
        passphrase=None,
        kdf_params=KdfParams(memory_kib=8192, iterations=1, lanes=1),
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(1000):
        t = start + timedelta(hours=i)
        result = "failed" if i % 100 == 7 else "ok"
        job = ("pg backup", "repo check", "pg restore-test")[i % 3]
        write_record(repo, RunRecord(job=job, start=t, end=t + timedelta(seconds=60), result=result,
                                     logical_bytes=i, new_bytes=1))  # fmt: skip
    repo.close()
    return tmp_path


def test_exporter_scrapes_are_served_from_memory_with_a_thousand_records(thousand: Path) -> None:
    config = parse_text(f'[repository]\nurl = "file://{thousand / "repo"}"\nowner = ""\n')
    source = MetricsSource(config)
    renders: list[int] = []

    def render() -> bytes:
        renders.append(1)
        return source.render()

    server = Exporter(render, "127.0.0.1:0", refresh_s=3600)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        first = get(f"http://{server.address}/metrics")
        for _ in range(20):
            assert get(f"http://{server.address}/metrics") == first
        assert len(renders) == 1  # computed once at start; scrapes only copied it out
        got = samples(first)
        assert got[("coldkeep_job_runs_total", (("result", "ok"), ("type", "pg_backup")))] == 331
        assert got[("coldkeep_job_failures_total", (("type", "pg_backup"),))] == 3  # i = 207, 507, 807
        assert got[("coldkeep_restore_test_passed", ())] == 1
        server.refresh()  # what the background thread does every --refresh seconds
        assert len(renders) == 2 and samples(get(f"http://{server.address}/metrics")) == got
    finally:
        server.server.shutdown()
        server.stop()
        thread.join(timeout=10)
        source.close()


def test_a_repository_that_cannot_be_opened_is_reported_not_hidden(tmp_path: Path) -> None:
    """The exporter still serves, saying the repository is down (an alert, not silence)."""
    broken = Site(tmp_path / "broken", url=f"file://{tmp_path / 'nothing-here'}")
    proc = broken.popen("exporter", "--listen", "127.0.0.1:0", "--refresh", "3600")
    try:
        assert proc.stderr is not None
        line = ""
        while "serving http://" not in line:
            line = proc.stderr.readline()
            assert line, "exporter exited"
        got = samples(get(line.split("serving ", 1)[1].strip()))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert got[("coldkeep_repository_up", ())] == 0


def test_metrics_command_and_default_textfile_dir(tmp_path: Path) -> None:
    assert MetricsConfig().textfile_dir == DEFAULT_TEXTFILE_DIR  # the lean check in cli/recorded.py
    site = metrics_site(tmp_path)
    site.ok("repo", "check")
    printed = site.ok("metrics")
    assert samples(printed.stdout) == samples((tmp_path / "textfile" / "coldkeep.prom").read_text())
    written = json.loads(site.ok("--json", "metrics", "--textfile", str(tmp_path)).stdout)
    assert written == {"textfile": str(tmp_path / "coldkeep.prom")}


def test_an_unreachable_pushgateway_is_a_warning_not_a_failed_job(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = metrics_site(tmp_path, f'pushgateway_url = "http://127.0.0.1:{port}"\n')
    proc = site.ok("repo", "check")
    assert "warning: metrics not updated after repo check: Pushgateway" in proc.stderr
    assert [r["result"] for r in site.json("runs")] == ["ok"]
    assert (tmp_path / "textfile" / "coldkeep.prom").is_file()  # written before the push was tried
