"""S3Backend specifics beyond the contract, against the real moto server (and a proxy in front of it
that plays servers which differ: no conditional PUT, throttling)."""

from __future__ import annotations

import time
import uuid

import pytest
from tests.fixtures.s3 import S3Proxy, S3Server

from coldkeep.errors import ObjectNotFound, StorageError, StorageUnavailable
from coldkeep.storage import open_backend, unwrap
from coldkeep.storage.s3 import MiB, S3Backend
from coldkeep.storage.wrappers import RetryBackend, is_transient

pytestmark = pytest.mark.s3


def test_endpoint_down_is_unavailable_and_quick(s3_server: S3Server, s3_stopped_endpoint: str) -> None:
    backend = S3Backend("bucket", "p", s3_stopped_endpoint, "us-east-1", max_attempts=1, connect_timeout=1)
    started = time.monotonic()
    for call in (lambda: backend.get("k"), lambda: backend.put("k", b"x"), lambda: list(backend.list())):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert is_transient(info.value)
    retried = RetryBackend(backend, attempts=2, base_delay=0.01)
    with pytest.raises(StorageUnavailable):
        retried.stat("k")
    assert time.monotonic() - started < 10
    assert "testing" not in info.value.message


def test_multipart_above_threshold(s3_bucket: tuple[str, str], s3_server: S3Server) -> None:
    endpoint, bucket = s3_bucket
    backend = S3Backend(bucket, "mp", endpoint, "us-east-1", multipart_threshold=6 * MiB, part_size=5 * MiB)
    backend.put("small", b"x" * (6 * MiB - 1))
    backend.put("big", b"y" * (11 * MiB))
    client = s3_server.client()
    assert "-" not in client.head_object(Bucket=bucket, Key="mp/small")["ETag"]
    assert client.head_object(Bucket=bucket, Key="mp/big")["ETag"].strip('"').endswith("-3")
    assert backend.get("big") == b"y" * (11 * MiB)


def test_prefix_keeps_objects_apart(s3_bucket: tuple[str, str], s3_server: S3Server) -> None:
    endpoint, bucket = s3_bucket
    one = S3Backend(bucket, "one", endpoint, "us-east-1")
    two = S3Backend(bucket, "/two/", endpoint, "us-east-1")
    one.put("k", b"1")
    two.put("k", b"2")
    s3_server.client().put_object(Bucket=bucket, Key="one/folder/", Body=b"")  # a console folder marker
    assert [i.key for i in one.list()] == ["k"]
    assert (one.get("k"), two.get("k")) == (b"1", b"2")
    assert two.describe() == f"s3://{bucket}/two @ {endpoint}"


def test_create_bucket(s3_server: S3Server) -> None:
    bucket = f"ck-new-{uuid.uuid4().hex[:10]}"
    backend = open_backend(f"s3://{bucket}/repo", endpoint_url=s3_server.endpoint_url, create=True)
    backend.put("config", b"{}")
    assert backend.get("config") == b"{}"
    S3Backend(bucket, "repo", s3_server.endpoint_url, None, create_bucket=True)  # exists: fine
    s3_server.client().delete_object(Bucket=bucket, Key="repo/config")
    s3_server.client().delete_bucket(Bucket=bucket)


def test_missing_bucket_is_a_storage_error_with_a_hint(s3_server: S3Server) -> None:
    backend = S3Backend(f"ck-missing-{uuid.uuid4().hex[:8]}", "", s3_server.endpoint_url, None)
    with pytest.raises(StorageError) as info:
        backend.put("k", b"x")
    assert not isinstance(info.value, ObjectNotFound)
    assert "repo init" in info.value.hint
    assert not is_transient(info.value)


def test_conditional_put_not_implemented_falls_back(s3_bucket: tuple[str, str], s3_proxy: S3Proxy) -> None:
    _, bucket = s3_bucket
    s3_proxy.rules.append(
        lambda method, path, headers: (
            (501, "NotImplemented") if method == "PUT" and "If-None-Match" in headers else None
        )
    )
    backend = S3Backend(bucket, "p", s3_proxy.endpoint_url, "us-east-1")
    assert backend.capabilities.atomic_create is True
    assert backend.put_if_absent("seg", b"first") is True
    assert backend.capabilities.atomic_create is False
    assert backend.put_if_absent("seg", b"second") is False
    assert backend.get("seg") == b"first"
    assert [s for m, _, s in s3_proxy.seen if m == "PUT"] == [501, 200]  # one try, then plain PUTs only


def test_precondition_failed_through_retry_wrapper(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    backend = open_backend(f"s3://{bucket}/x", endpoint_url=endpoint)
    assert backend.put_if_absent("a", b"1") is True
    assert backend.put_if_absent("a", b"2") is False
    assert unwrap(backend).capabilities.atomic_create is True


def test_slowdown_is_transient_and_retried(s3_bucket: tuple[str, str], s3_proxy: S3Proxy) -> None:
    _, bucket = s3_bucket
    remaining = [3]

    def throttle(method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        if method == "GET" and remaining[0] > 0:
            remaining[0] -= 1
            return (503, "SlowDown")
        return None

    s3_proxy.rules.append(throttle)
    plain = S3Backend(bucket, "p", s3_proxy.endpoint_url, "us-east-1", max_attempts=1)
    plain.put("k", b"v")
    with pytest.raises(StorageError) as info:
        plain.get("k")
    assert is_transient(info.value)
    assert not isinstance(info.value, StorageUnavailable)
    retried = RetryBackend(plain, attempts=4, base_delay=0.01)
    assert retried.get("k") == b"v"
    assert remaining == [0]
