"""The storage contract (coldkeep.storage.base), run against every backend.

Like restic's backend test suite: one set of tests, each backend must pass all of them.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coldkeep.errors import InvalidKey, ObjectNotFound
from coldkeep.storage import open_backend
from coldkeep.storage.base import Backend
from coldkeep.storage.local import LocalBackend
from coldkeep.storage.s3 import MiB, S3Backend
from coldkeep.storage.wrappers import RetryBackend

#: the S3 backend under test switches to multipart above this (moto's minimum part is 5 MiB)
THRESHOLD = 6 * MiB
PART = 5 * MiB


@pytest.fixture(
    params=[
        pytest.param("local"),
        pytest.param("file-url"),
        pytest.param("s3", marks=pytest.mark.s3),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "local":
        b = LocalBackend(tmp_path / "repo")
    elif request.param == "file-url":
        b = open_backend(f"file://{tmp_path}/repo")
    else:
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        b = S3Backend(
            bucket, "some/prefix", endpoint, "us-east-1", multipart_threshold=THRESHOLD, part_size=PART
        )
    yield b
    b.close()


def keys(backend: Backend, prefix: str = "") -> set[str]:
    return {info.key for info in backend.list(prefix)}


def test_describe_names_the_location(backend: Backend) -> None:
    text = backend.describe()
    assert text
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "\0") not in text


def test_put_get_round_trip(backend: Backend) -> None:
    backend.put("data/one", b"hello")
    assert backend.get("data/one") == b"hello"
    assert backend.exists("data/one")
    info = backend.stat("data/one")
    assert info.key == "data/one"
    assert info.size == 5
    assert abs(info.mtime - time.time()) < 300


def test_empty_object(backend: Backend) -> None:
    backend.put("empty", b"")
    assert backend.get("empty") == b""
    assert backend.stat("empty").size == 0
    assert backend.get_range("empty", 0, 10) == b""
    with backend.open("empty") as f:
        assert f.read() == b""


def test_put_overwrites(backend: Backend) -> None:
    backend.put("locks/x", b"first version")
    backend.put("locks/x", b"second")
    assert backend.get("locks/x") == b"second"
    assert backend.stat("locks/x").size == 6


def test_put_if_absent(backend: Backend) -> None:
    assert backend.put_if_absent("wal/seg", b"original") is True
    assert backend.put_if_absent("wal/seg", b"original") is False
    assert backend.put_if_absent("wal/seg", b"different") is False
    assert backend.get("wal/seg") == b"original"
    backend.delete("wal/seg")
    assert backend.put_if_absent("wal/seg", b"again") is True
    assert backend.get("wal/seg") == b"again"


def test_put_if_absent_race_has_one_winner(backend: Backend) -> None:
    if not backend.capabilities.atomic_create:
        pytest.skip("backend does not claim atomic create")
    results = race(lambda i: backend.put_if_absent("race/key", f"writer {i}".encode()))
    assert sorted(results) == [False] * 7 + [True]
    assert backend.get("race/key").startswith(b"writer ")


def race(write: Callable[[int], bool], writers: int = 8) -> list[bool]:
    """``write(i)`` from ``writers`` threads let go at once; their results."""
    results: list[bool] = []
    barrier = threading.Barrier(writers)

    def worker(i: int) -> None:
        barrier.wait()
        results.append(write(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_put_if_version_is_a_compare_and_swap(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.get_version("state/rec")
    assert backend.put_if_version("state/rec", b"one", "no-such-version") is False  # nothing there
    assert backend.put_if_version("state/rec", b"one", None) is True  # None: only if absent
    assert backend.put_if_version("state/rec", b"other", None) is False
    data, v1 = backend.get_version("state/rec")
    assert data == b"one"
    assert backend.put_if_version("state/rec", b"two", v1) is True
    data, v2 = backend.get_version("state/rec")
    assert data == b"two" and v2 != v1
    assert backend.put_if_version("state/rec", b"three", v1) is False  # v1 is gone
    assert backend.get("state/rec") == b"two"
    backend.delete("state/rec")
    assert backend.put_if_version("state/rec", b"four", v2) is False  # deleted meanwhile


def test_put_if_version_race_has_one_winner(backend: Backend) -> None:
    assert backend.capabilities.atomic_update  # every backend here claims it (S3: If-Match)
    backend.put("race/rec", b"start")
    _, version = backend.get_version("race/rec")
    results = race(lambda i: backend.put_if_version("race/rec", f"writer {i}".encode(), version))
    assert sorted(results) == [False] * 7 + [True]
    assert backend.get("race/rec").startswith(b"writer ")


def test_get_range(backend: Backend) -> None:
    data = bytes(range(100))
    backend.put("r", data)
    assert backend.get_range("r", 0, 10) == data[:10]
    assert backend.get_range("r", 42, 8) == data[42:50]
    assert backend.get_range("r", 95, 10) == data[95:]  # short only at the end
    assert backend.get_range("r", 99, 1) == data[99:]
    assert backend.get_range("r", 100, 5) == b""  # at the end
    assert backend.get_range("r", 500, 5) == b""  # past the end
    assert backend.get_range("r", 10, 0) == b""


def test_open_streams(backend: Backend) -> None:
    data = os.urandom(300_000)
    backend.put("stream/obj", data)
    with backend.open("stream/obj") as f:
        assert f.read(10) == data[:10]
        rest = io.BytesIO()
        while chunk := f.read(65536):
            rest.write(chunk)
    assert rest.getvalue() == data[10:]
    with backend.open("stream/obj") as f:
        assert f.read() == data


def test_list_with_prefixes(backend: Backend) -> None:
    for key in ("a/b/c", "a/b/d", "a/bc", "ab", "x/y/z/deep", "top"):
        backend.put(key, key.encode())
    assert keys(backend) == {"a/b/c", "a/b/d", "a/bc", "ab", "x/y/z/deep", "top"}
    assert keys(backend, "a/") == {"a/b/c", "a/b/d", "a/bc"}
    assert keys(backend, "a/b/") == {"a/b/c", "a/b/d"}
    assert keys(backend, "a/b") == {"a/b/c", "a/b/d", "a/bc"}  # a string prefix, not a directory
    assert keys(backend, "a") == {"a/b/c", "a/b/d", "a/bc", "ab"}
    assert keys(backend, "a/b/c") == {"a/b/c"}
    assert keys(backend, "x/y/") == {"x/y/z/deep"}
    assert keys(backend, "nothing") == set()
    assert keys(backend, "nothing/here/") == set()
    sizes = {info.key: info.size for info in backend.list("a/")}
    assert sizes == {"a/b/c": 5, "a/b/d": 5, "a/bc": 4}


def test_list_empty_backend(backend: Backend) -> None:
    assert keys(backend) == set()


def test_delete_is_idempotent(backend: Backend) -> None:
    backend.put("d/x", b"1")
    backend.delete("d/x")
    backend.delete("d/x")
    backend.delete("never/existed")
    assert not backend.exists("d/x")
    assert keys(backend) == set()
    with pytest.raises(ObjectNotFound):
        backend.get("d/x")


def test_missing_key_is_object_not_found(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.get("no/such/key")
    with pytest.raises(ObjectNotFound):
        backend.stat("no/such/key")
    with pytest.raises(ObjectNotFound):
        backend.get_range("no/such/key", 0, 10)
    with pytest.raises(ObjectNotFound):
        backend.get_range("no/such/key", 0, 0)
    with pytest.raises(ObjectNotFound):
        backend.open("no/such/key")
    assert backend.exists("no/such/key") is False


def test_a_prefix_of_keys_is_not_an_object(backend: Backend) -> None:
    backend.put("dir/obj", b"x")
    for call in (backend.get, backend.stat, backend.open):
        with pytest.raises(ObjectNotFound):
            call("dir")
    backend.delete("dir")
    assert backend.get("dir/obj") == b"x"


BAD_KEYS = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    "../up",
    "a/../b",
    ".",
    "a/./b",
    "sp ace",
    "back\\slash",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected(backend: Backend, key: str) -> None:
    with pytest.raises(InvalidKey):
        backend.put(key, b"x")
    with pytest.raises(InvalidKey):
        backend.put_if_absent(key, b"x")
    with pytest.raises(InvalidKey):
        backend.get(key)
    with pytest.raises(InvalidKey):
        backend.get_range(key, 0, 1)
    with pytest.raises(InvalidKey):
        backend.open(key)
    with pytest.raises(InvalidKey):
        backend.stat(key)
    with pytest.raises(InvalidKey):
        backend.delete(key)


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../b/", "sp ace"])
def test_invalid_list_prefix_is_rejected(backend: Backend, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        list(backend.list(prefix))


def test_large_object(backend: Backend) -> None:
    data = os.urandom(2 * THRESHOLD + 12345)  # > the multipart threshold: 3 parts on S3
    backend.put("packs/big", data)
    assert backend.stat("packs/big").size == len(data)
    assert backend.get("packs/big") == data
    assert backend.get_range("packs/big", PART - 100, 200) == data[PART - 100 : PART + 100]
    assert backend.get_range("packs/big", len(data) - 10, 100) == data[-10:]
    with backend.open("packs/big") as f:
        assert f.read() == data
    assert backend.put_if_absent("packs/big2", data) is True
    assert backend.get("packs/big2") == data


def test_concurrent_puts_from_threads(backend: Backend) -> None:
    # through the retry layer that open_backend always adds: moto's server sometimes answers 500 to
    # one of eight simultaneous PUTs of the same key (a real S3 answers 503 SlowDown the same way);
    # the contract is that such an answer is transient and the retried call then succeeds
    backend = RetryBackend(backend, base_delay=0.05)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(6):
                key = f"c/t{t}/obj{i}"
                backend.put(key, f"{key}:".encode() * 100)
                backend.put("c/shared", f"thread {t} ".encode() * 1000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for t in range(8):
        for i in range(6):
            key = f"c/t{t}/obj{i}"
            assert backend.get(key) == f"{key}:".encode() * 100
    shared = backend.get("c/shared")
    assert shared in {f"thread {t} ".encode() * 1000 for t in range(8)}  # one complete version
    assert len(keys(backend, "c/")) == 49


def test_binary_data_with_every_byte_value(backend: Backend) -> None:
    data = bytes(range(256)) * 64 + b"\r\n\x00\xff" + bytes(reversed(range(256)))
    backend.put("bin", data)
    assert backend.get("bin") == data
    assert backend.get_range("bin", 250, 12) == data[250:262]
    with backend.open("bin") as f:
        assert f.read() == data


def test_keys_with_all_allowed_characters(backend: Backend) -> None:
    key = "Az09._-/x.y-z_1/..a/b.."
    backend.put(key, b"ok")
    assert backend.get(key) == b"ok"
    assert keys(backend) == {key}
