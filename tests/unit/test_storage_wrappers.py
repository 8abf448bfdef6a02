"""RetryBackend, FaultBackend (plans, data faults, kill -9 of a real process) and open_backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldkeep.errors import ConfigError, ObjectNotFound, StorageError, StorageFull
from coldkeep.storage import open_backend, unwrap
from coldkeep.storage.base import ObjectInfo
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.s3 import S3Backend
from coldkeep.storage.wrappers import (
    Fault,
    FaultBackend,
    FaultPlan,
    RetryBackend,
    is_transient,
    mark_transient,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


# -- RetryBackend --------------------------------------------------------------------------------


def make(tmp_path: Path, plan: str, **kw: float) -> tuple[RetryBackend, FaultBackend, list[float]]:
    delays: list[float] = []
    faulty = FaultBackend(LocalBackend(tmp_path), plan)
    retry = RetryBackend(faulty, sleep=delays.append, **kw)
    return retry, faulty, delays


def test_retry_succeeds_after_transient_failures(tmp_path: Path) -> None:
    backend, faulty, delays = make(tmp_path, "fail:put:1:transient,fail:put:2:transient")
    backend.put("k", b"v")
    assert faulty.calls["put"] == 3
    assert len(delays) == 2
    assert backend.get("k") == b"v"


def test_retry_gives_up_after_attempts(tmp_path: Path) -> None:
    backend, faulty, delays = make(tmp_path, "fail:get:1+:transient", attempts=3)
    with pytest.raises(StorageError) as info:
        backend.get("k")
    assert is_transient(info.value)
    assert faulty.calls["get"] == 3
    assert len(delays) == 2


def test_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    backend, faulty, delays = make(tmp_path, "fail:stat:1")
    with pytest.raises(StorageError):
        backend.stat("k")
    assert faulty.calls["stat"] == 1
    assert delays == []


def test_object_not_found_is_never_retried(tmp_path: Path) -> None:
    class Flaky(LocalBackend):
        calls = 0

        def get(self, key: str) -> bytes:
            Flaky.calls += 1
            raise mark_transient(ObjectNotFound(key))

    backend = RetryBackend(Flaky(tmp_path), sleep=lambda s: None)
    with pytest.raises(ObjectNotFound):
        backend.get("k")
    assert Flaky.calls == 1


def test_retry_delays_grow_with_jitter(tmp_path: Path) -> None:
    backend = RetryBackend(LocalBackend(tmp_path), base_delay=0.2, max_delay=5)
    for retry, cap in ((1, 0.2), (2, 0.4), (3, 0.8), (10, 5.0)):
        for _ in range(50):
            assert cap / 2 <= backend._delay(retry) <= cap


def test_list_retry_restarts_without_duplicates(tmp_path: Path) -> None:
    class BreaksMidway(LocalBackend):
        broke = False

        def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
            for n, info in enumerate(super().list(prefix)):
                if n == 2 and not BreaksMidway.broke:
                    BreaksMidway.broke = True
                    raise mark_transient(StorageError("connection reset"))
                yield info

    inner = BreaksMidway(tmp_path)
    for i in range(5):
        inner.put(f"k{i}", b"x")
    backend = RetryBackend(inner, sleep=lambda s: None)
    listed = [info.key for info in backend.list()]
    assert BreaksMidway.broke
    assert sorted(listed) == [f"k{i}" for i in range(5)]


def test_wrappers_forward_capabilities_and_describe(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    backend = RetryBackend(FaultBackend(local, "count"))
    assert backend.capabilities == local.capabilities
    assert backend.describe() == local.describe()
    assert unwrap(backend) is local


# -- fault plans ---------------------------------------------------------------------------------


def test_plan_parsing() -> None:
    plan = FaultPlan.parse(
        "kill:put:7, fail:any:3,flip:get:2,full:put:5,fail:write:2+:transient,kill:delete:1:after"
    )
    assert plan.faults == (
        Fault("kill", "put", 7),
        Fault("fail", "any", 3),
        Fault("flip", "get", 2),
        Fault("full", "put", 5),
        Fault("fail", "write", 2, and_later=True, option="transient"),
        Fault("kill", "delete", 1, option="after"),
    )
    assert FaultPlan.parse(str(plan)).faults == plan.faults
    assert FaultPlan.parse("count").faults == ()
    assert FaultPlan.parse("").faults == ()


@pytest.mark.parametrize(
    "text",
    [
        "boom:put:1",
        "fail:upload:1",
        "fail:put:0",
        "fail:put:x",
        "fail:put",
        "fail:put:1:transient:extra",
        "fail:put:1:bogus",
        "kill:put:1:transient",
        "flip:stat:1",
        "truncate:delete:2",
    ],
)
def test_bad_plans_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        FaultPlan.parse(text)


def test_counting_per_operation_group_and_any() -> None:
    plan = FaultPlan.parse("fail:any:4,fail:write:2,fail:put_if_absent:1+")
    assert plan.count("get") == []
    assert [f.op for f in plan.count("put")] == []  # write #1
    assert [f.op for f in plan.count("put_if_absent")] == ["write", "put_if_absent"]  # write #2
    assert [f.op for f in plan.count("stat")] == ["any"]  # any #4
    assert [f.op for f in plan.count("put_if_absent")] == ["put_if_absent"]
    assert plan.counts == {"get": 1, "put": 1, "put_if_absent": 2, "stat": 1, "any": 5}


def test_fail_transient_and_permanent(tmp_path: Path) -> None:
    backend = FaultBackend(LocalBackend(tmp_path), "fail:put:1,fail:put:2:transient")
    with pytest.raises(StorageError) as first:
        backend.put("k", b"v")
    with pytest.raises(StorageError) as second:
        backend.put("k", b"v")
    assert not is_transient(first.value)
    assert is_transient(second.value)
    backend.put("k", b"v")
    assert backend.get("k") == b"v"


def test_flip_on_put_and_get(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    backend = FaultBackend(local, "flip:put:1,flip:get:2")
    data = bytes(range(256))
    backend.put("k", data)
    stored = local.get("k")
    assert len(stored) == len(data)
    assert sum(a != b for a, b in zip(stored, data, strict=True)) == 1
    local.put("k", data)
    assert backend.get("k") == data  # get #1: untouched
    got = backend.get("k")  # get #2: flipped
    assert sum(a != b for a, b in zip(got, data, strict=True)) == 1
    assert local.get("k") == data  # the stored copy is fine


def test_truncate_on_put_get_range_and_open(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    backend = FaultBackend(local, "truncate:put:1,truncate:get_range:1,truncate:open:1")
    backend.put("k", b"0123456789")
    assert local.get("k") == b"01234"
    local.put("k", b"0123456789")
    assert backend.get_range("k", 2, 6) == b"234"
    with backend.open("k") as f:
        assert f.read() == b"01234"
    with backend.open("k") as f:
        assert f.read() == b"0123456789"


def test_full(tmp_path: Path) -> None:
    backend = FaultBackend(LocalBackend(tmp_path), "full:write:2")
    assert backend.put_if_absent("a", b"1")
    with pytest.raises(StorageFull):
        backend.put("b", b"2")
    assert not backend.exists("b")


def test_fail_on_list(tmp_path: Path) -> None:
    backend = FaultBackend(LocalBackend(tmp_path), "fail:list:1")
    with pytest.raises(StorageError):
        list(backend.list())
    assert list(backend.list()) == []


def test_from_env_shares_one_plan_per_process(tmp_path: Path) -> None:
    env = {"COLDKEEP_FAULTS": "fail:put:2", "COLDKEEP_TESTING": "1"}
    assert FaultPlan.from_env({}) is None
    assert FaultPlan.from_env({"COLDKEEP_FAULTS": "fail:put:2"}) is None  # a test hook needs the switch
    a = FaultBackend.from_env(LocalBackend(tmp_path / "a"), env)
    b = FaultBackend.from_env(LocalBackend(tmp_path / "b"), env)
    assert isinstance(a, FaultBackend) and isinstance(b, FaultBackend)
    assert a.plan is b.plan
    a.put("x", b"1")
    with pytest.raises(StorageError):
        b.put("x", b"1")  # the second put of this process
    local = LocalBackend(tmp_path)
    assert FaultBackend.from_env(local, {}) is local


# -- kill -9 of a real process -------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from coldkeep.storage import open_backend
    from coldkeep.storage.local import LocalBackend
    from coldkeep.storage.wrappers import FaultBackend

    root, plan = sys.argv[1], sys.argv[2]
    if plan == "env":
        backend = open_backend("file://" + root)
    else:
        backend = FaultBackend(LocalBackend(Path(root)), plan)
    for i in range(1, 6):
        backend.put(f"objs/obj-{i}", bytes([i]) * (1024 * 1024))
        print(f"put {i}", flush=True)
    """
)


def run_writer(root: Path, plan: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(root), plan],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def assert_complete_objects(root: Path, count: int) -> None:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [f"objs/obj-{i}" for i in range(1, count + 1)]  # no temp file, no partial one
    for i in range(1, count + 1):
        assert (root / "objs" / f"obj-{i}").read_bytes() == bytes([i]) * (1024 * 1024)


def test_kill_before_the_third_put(tmp_path: Path) -> None:
    done = run_writer(tmp_path, "kill:put:3")
    assert done.returncode == -9, done.stderr
    assert done.stdout.split("\n")[:2] == ["put 1", "put 2"]
    assert_complete_objects(tmp_path, 2)


def test_kill_after_the_third_put(tmp_path: Path) -> None:
    done = run_writer(tmp_path, "kill:put:3:after")
    assert done.returncode == -9, done.stderr
    assert_complete_objects(tmp_path, 3)


READER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from coldkeep.errors import ObjectNotFound
    from coldkeep.storage.local import LocalBackend
    from coldkeep.storage.wrappers import FaultBackend

    root, plan = Path(sys.argv[1]), sys.argv[2]
    backend = FaultBackend(LocalBackend(root), plan)
    for i in range(3):
        backend.put(f"objs/obj-{i}", b"x")
    try:
        backend.get("objs/missing")  # call 4: raises
    except ObjectNotFound:
        print("get raised", flush=True)
    print("first", next(iter(backend.list("objs/"))).key, flush=True)  # call 5: abandoned early
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize(
    ("plan", "printed"), [("kill:any:4:after", ""), ("kill:any:5:after", "get raised\n")]
)
def test_kill_after_a_call_that_raised_or_a_listing_left_early(
    tmp_path: Path, plan: str, printed: str
) -> None:
    """Every counted call is a kill point: "after" fires also when the call raised or the
    caller stopped reading a listing (the crash tests spread kills over the counted calls)."""
    done = subprocess.run([sys.executable, "-c", READER, str(tmp_path), plan], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=SRC), timeout=60)  # fmt: skip
    assert done.returncode == -9, done.stdout + done.stderr
    assert done.stdout.startswith(printed) and "survived" not in done.stdout


def test_kill_from_the_environment_through_open_backend(tmp_path: Path) -> None:
    done = run_writer(tmp_path, "env", {"COLDKEEP_FAULTS": "kill:write:4"})
    assert done.returncode == -9, done.stderr
    assert_complete_objects(tmp_path, 3)


def test_counts_file_tells_how_many_calls_a_run_makes(tmp_path: Path) -> None:
    counts = tmp_path / "counts.json"
    root = tmp_path / "repo"
    done = run_writer(root, "env", {"COLDKEEP_FAULTS": "count", "COLDKEEP_FAULTS_COUNTS": str(counts)})
    assert done.returncode == 0, done.stderr
    assert json.loads(counts.read_text()) == {"any": 5, "put": 5}
    assert_complete_objects(root, 5)


# -- open_backend --------------------------------------------------------------------------------


def test_open_backend_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLDKEEP_FAULTS", raising=False)
    backend = open_backend(f"file://{tmp_path}/repo", create=True)
    assert isinstance(backend, RetryBackend)
    assert isinstance(unwrap(backend), LocalBackend)
    assert isinstance(backend.inner, LocalBackend)
    assert (tmp_path / "repo").is_dir()
    assert open_backend(f"file://localhost{tmp_path}/repo").describe() == f"file://{tmp_path}/repo"


def test_open_backend_adds_faults_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDKEEP_FAULTS", "fail:put:1:transient")
    backend = open_backend(f"file://{tmp_path}")
    assert isinstance(backend, RetryBackend)
    assert isinstance(backend.inner, FaultBackend)
    backend.put("k", b"v")  # the injected transient failure was retried
    assert backend.inner.calls["put"] == 2


def test_open_backend_s3_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLDKEEP_FAULTS", raising=False)
    backend = open_backend("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    inner = unwrap(backend)
    assert isinstance(inner, S3Backend)
    assert (inner.bucket, inner.prefix, inner.region) == ("bucket", "some/prefix", "eu-west-1")
    assert backend.describe() == "s3://bucket/some/prefix @ http://127.0.0.1:9"


@pytest.mark.parametrize(
    "url",
    [
        "/plain/path",
        "ftp://host/x",
        "file://relative/path",
        "file:relative",
        "s3:///no-bucket",
        "s3://u:p@bucket/x",
        "s3://bucket:notaport/x",
        "s3://bucket/bad prefix",
    ],
)
def test_open_backend_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_backend(url)


def test_the_lock_refresh_thread_is_neither_counted_nor_faulted(tmp_path: Path) -> None:
    """A lock refresh happens when the clock says so: counting it made "the Nth call" of a kill
    test a different call in a slow run (test_kill_repair killed nothing at its last point)."""
    import threading

    from coldkeep.storage.base import UNCOUNTED_THREAD

    faulty = FaultBackend(LocalBackend(tmp_path), FaultPlan.parse("fail:put:1"))
    failures: list[BaseException] = []

    def refresh() -> None:
        try:
            faulty.put("locks/x", b"refreshed")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=refresh, name=UNCOUNTED_THREAD)
    thread.start()
    thread.join()
    assert not failures and faulty.calls["put"] == 0 and faulty.calls["any"] == 0
    with pytest.raises(StorageError):  # the first counted put is still the one the plan names
        faulty.put("data/y", b"x")
