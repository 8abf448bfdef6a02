"""S3-compatible object storage backend (AWS S3, MinIO, Ceph RGW, moto, ...).

Contract (in addition to :mod:`coldkeep.storage.base`)
------------------------------------------------------
* Credentials come only from boto3's default chain (environment, shared files, instance role);
  they never appear in messages, logs or :meth:`S3Backend.describe`.
* Objects live at ``<prefix>/<key>`` in ``bucket``.  ``put`` is a single PUT below
  ``multipart_threshold`` (with ``Content-MD5``, so the server rejects damaged bodies) and a
  multipart upload above it; S3 makes both atomic (all or nothing).
* ``put_if_absent`` is a conditional PUT (``If-None-Match: *``): atomic on servers that support
  it.  When the server answers 501 NotImplemented the instance falls back to HEAD-then-PUT and
  reports ``capabilities.atomic_create = False`` (a race between two writers is then possible).
* ``put_if_version`` is a conditional PUT with ``If-Match: <ETag>`` (the version of
  ``get_version`` is the ETag; ``None`` means ``If-None-Match: *``); 412 (and a 409 conflict
  between two conditional writes) is "the object changed", ``False``.  A server that answers 501
  gets the read-compare-put fallback and ``capabilities.atomic_update = False``.  A server that
  ignores ``If-Match`` altogether cannot be told from one that honours it (AWS S3 and moto
  honour it; check another S3-compatible server before relying on it).
* Errors: missing key -> :class:`~coldkeep.errors.ObjectNotFound`; endpoint unreachable or timing
  out -> :class:`~coldkeep.errors.StorageUnavailable` (transient); 5xx / SlowDown ->
  :class:`~coldkeep.errors.StorageError` (transient); anything else -> ``StorageError``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn
from urllib.parse import urlsplit, urlunsplit

import boto3
import boto3.exceptions
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from coldkeep.errors import ConfigError, InvalidKey, ObjectNotFound, StorageError, StorageUnavailable
from coldkeep.storage.base import Backend, Capabilities, Data, ObjectInfo, validate_key, validate_prefix
from coldkeep.storage.wrappers import mark_transient

MiB = 1024 * 1024
#: largest object a single PUT may carry (S3 limit)
MAX_SINGLE_PUT = 5 * 1024 * MiB

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})
_PRECONDITION = frozenset({"PreconditionFailed", "412"})


def _safe_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages, without any user:password@ part."""
    if not endpoint_url:
        return "aws"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_session_lock = threading.Lock()
_session: Any = None


def _make_client(endpoint_url: str | None, region: str | None, config: Config) -> Any:
    """A new client from one shared boto3 session (loading the service model once per process).

    Sessions are not thread-safe, so clients are created under a lock; clients themselves are.
    """
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class S3Backend(Backend):
    """Objects at ``s3://bucket/prefix/KEY``.  Thread-safe (one botocore client)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        *,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        max_attempts: int = 2,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        conditional_put: bool = True,
    ) -> None:
        if not bucket:
            raise StorageError("an S3 repository needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            try:
                validate_prefix(self.prefix)
            except InvalidKey:
                raise ConfigError(
                    f"S3 prefix {prefix!r} is not valid",
                    hint="use '/'-separated parts of letters, digits, '.', '_' and '-'",
                ) from None
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._conditional = conditional_put
        self._conditional_update = conditional_put
        self.capabilities = Capabilities(
            atomic_create=conditional_put, local=False, atomic_update=conditional_put
        )
        self._lock = threading.Lock()
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},  # tries, the first included
            max_pool_connections=32,
            # path style for custom endpoints (MinIO, moto, Ceph); virtual hosts for AWS
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # only the checksums S3 requires: many S3-compatible servers reject the newer
            # aws-chunked trailing checksums; single PUTs carry Content-MD5 instead
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = _make_client(self.endpoint_url, self.region, config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_size,
            max_concurrency=4,
        )
        if create_bucket:
            self.ensure_bucket()

    # -- helpers ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} @ {_safe_endpoint(self.endpoint_url)}"

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _raise(self, exc: Exception, what: str, key: str | None = None) -> NoReturn:
        """Translate a boto3/botocore exception into a coldkeep storage error."""
        where = self.describe()
        if isinstance(exc, boto3.exceptions.S3UploadFailedError):
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, Exception):
                self._raise(inner, what, key)
            raise StorageError(f"{what} on {where}: {exc}") from exc
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = exc.response.get("Error", {}).get("Message", "") or code or str(status)
            if code == "NoSuchBucket":
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {_safe_endpoint(self.endpoint_url)}",
                    hint="create the repository with `coldkeep repo init` (it creates the bucket)",
                ) from exc
            if key is not None and (code in _NOT_FOUND or status == 404):
                raise ObjectNotFound(f"{key} in {where}") from exc
            detail = f"{what} on {where}: {code or status} {message}".strip()
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                raise StorageError(
                    detail, hint="check the S3 credentials in the environment and the bucket policy"
                ) from exc
            error = StorageError(detail)
            raise mark_transient(error, code in _TRANSIENT or status >= 500) from exc
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError):
            # botocore has tried max_attempts times already, each up to the timeout: not retried
            # again (an endpoint that accepts connections and never answers must fail in ~30 s)
            connect, read, attempts = self._timeouts
            which = (
                ("connect_timeout", connect)
                if isinstance(exc, botocore.exceptions.ConnectTimeoutError)
                else ("read_timeout", read)
            )
            raise StorageUnavailable(
                f"{where}: no answer within {which[1]:g} s ({which[0]}), {attempts} tries",
                hint=f"check that the endpoint is up; [repository] {which[0]} sets the limit",
            ) from exc
        if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
            raise mark_transient(StorageUnavailable(f"{where} ({type(exc).__name__})")) from exc
        if isinstance(
            exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            raise StorageUnavailable(
                f"{where}: no S3 credentials found",
                hint="set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) in the environment",
            ) from exc
        if isinstance(
            exc, botocore.exceptions.IncompleteReadError | botocore.exceptions.ResponseStreamingError
        ):
            raise mark_transient(StorageError(f"{what} on {where}: {exc}")) from exc
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            raise StorageError(f"{what} on {where}: {exc}") from exc
        if isinstance(exc, urllib3.exceptions.HTTPError):  # a body that broke off or stalled
            raise mark_transient(StorageUnavailable(f"{what} on {where}: {exc}")) from exc
        raise exc

    def _body(self, response: Any, what: str) -> bytes:
        """The whole body of a GET.  An answer that began and then stalled for ``read_timeout``
        is transient (retried by the RetryBackend: a network hiccup in the middle of a pack must
        not end a long restore), unlike an endpoint that never answers (botocore's tries)."""
        try:
            with response["Body"] as body:
                data: bytes = body.read()
        except (botocore.exceptions.ReadTimeoutError, urllib3.exceptions.ReadTimeoutError) as exc:
            raise mark_transient(
                StorageUnavailable(
                    f"{what} on {self.describe()}: the answer stalled for {self._timeouts[1]:g} s "
                    "(read_timeout) after it began"
                )
            ) from exc
        return data

    # -- the interface ---------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (``repo init`` / ``repo copy``)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                self._raise(exc, "head bucket")
        except Exception as exc:
            self._raise(exc, "head bucket")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou",):
                self._raise(exc, "create bucket")
        except Exception as exc:
            self._raise(exc, "create bucket")

    def put(self, key: str, data: Data) -> None:
        """Store ``data`` (single PUT, or multipart above ``multipart_threshold``)."""
        full = self._key(key)
        data = data if isinstance(data, bytes) else bytes(data)  # botocore wants bytes
        try:
            if len(data) < self.multipart_threshold:
                self._put_object(full, data)
            else:
                self._client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=self._transfer)
        except Exception as exc:
            self._raise(exc, f"put {key}")

    def _put_object(self, full: str, data: bytes, **extra: str) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5, **extra)

    def put_if_absent(self, key: str, data: Data) -> bool:
        """Conditional PUT; ``False`` if the key exists (412).  See the module doc for fallback."""
        full = self._key(key)
        data = data if isinstance(data, bytes) else bytes(data)  # botocore wants bytes
        if len(data) > MAX_SINGLE_PUT:
            if self.exists(key):
                return False
            self.put(key, data)
            return True
        if self._conditional:
            try:
                self._put_object(full, data, IfNoneMatch="*")
                return True
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                if code in _PRECONDITION or status == 412:
                    return False
                if not (code in _NOT_IMPLEMENTED or status == 501):
                    self._raise(exc, f"put {key}")
                with self._lock:
                    self._conditional = False
                    self.capabilities = Capabilities(
                        atomic_create=False, local=False, atomic_update=self._conditional_update
                    )
            except Exception as exc:
                self._raise(exc, f"put {key}")
        # fallback for servers without conditional PUT: not atomic between two writers
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def get_version(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag."""
        full = self._key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            return self._body(response, f"get {key}"), str(response["ETag"])
        except Exception as exc:
            self._raise(exc, f"get {key}", key)

    def put_if_version(self, key: str, data: Data, version: str | None) -> bool:
        """Conditional PUT (``If-Match`` the ETag, or ``If-None-Match: *`` for ``None``)."""
        if version is None:
            return self.put_if_absent(key, data)
        if not self._conditional_update:
            return super().put_if_version(key, data, version)
        full = self._key(key)
        data = data if isinstance(data, bytes) else bytes(data)
        try:
            self._put_object(full, data, IfMatch=version)
            return True
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _PRECONDITION or status in (409, 412) or code in _NOT_FOUND or status == 404:
                return False  # changed, replaced concurrently, or deleted
            if not (code in _NOT_IMPLEMENTED or status == 501):
                self._raise(exc, f"put {key}")
        except Exception as exc:
            self._raise(exc, f"put {key}")
        with self._lock:  # the server has no If-Match: not atomic from now on
            self._conditional_update = False
            self.capabilities = Capabilities(
                atomic_create=self.capabilities.atomic_create, local=False, atomic_update=False
            )
        return super().put_if_version(key, data, version)

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            return self._body(response, f"get {key}")
        except Exception as exc:
            self._raise(exc, f"get {key}", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        full = self._key(key)
        if length == 0:
            self.stat(key)  # still: a missing key is an error
            return b""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{offset + length - 1}"
            )
            return self._body(response, f"get {key}")
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":  # the object exists, offset is at or past its end
                return b""
            self._raise(exc, f"get {key}", key)
        except Exception as exc:
            self._raise(exc, f"get {key}", key)

    def open(self, key: str) -> BinaryIO:
        """A buffered stream over the object; read errors become storage errors."""
        full = self._key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._raise(exc, f"get {key}", key)
        return io.BufferedReader(_BodyReader(self, key, response["Body"]), buffer_size=MiB)

    def stat(self, key: str) -> ObjectInfo:
        full = self._key(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._raise(exc, f"stat {key}", key)
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object below the backend prefix whose key starts with ``prefix``.

        Objects whose names are not valid coldkeep keys (e.g. console "folder" markers) are skipped.
        """
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", ()):
                    key = str(item["Key"])[len(base) :]
                    try:
                        validate_key(key)
                    except InvalidKey:
                        continue
                    yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
        except Exception as exc:
            self._raise(exc, f"list {prefix!r}")

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        full = self._key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._raise(exc, f"delete {key}")

    def close(self) -> None:
        self._client.close()


class _BodyReader(io.RawIOBase):
    """Raw stream over a botocore ``StreamingBody`` that maps read errors to storage errors."""

    def __init__(self, backend: S3Backend, key: str, body: Any) -> None:
        super().__init__()
        self._backend = backend
        self._key = key
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            n: int = self._body.readinto(buffer)
        except Exception as exc:
            self._backend._raise(exc, f"read {self._key}", self._key)
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
