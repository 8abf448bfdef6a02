"""Tests for coldkeep.repository.crypto: sealing, keyed ids, key slots, passphrase sources."""

from __future__ import annotations

import io
import json
import pickle
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import legacy_key_slot

from coldkeep.errors import (
    ConfigError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    RepositoryError,
    RepositoryExists,
    StorageError,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from coldkeep.repository import crypto
from coldkeep.repository.crypto import (
    KdfParams,
    KeyRing,
    Keys,
    PlainKeys,
    add_slot,
    init_keys,
    list_slots,
    open_keys,
    read_passphrase,
    remove_slot,
)
from coldkeep.storage.base import Backend, Capabilities, ObjectInfo, validate_key, validate_prefix

#: tiny Argon2id cost so the suite stays fast (the default is 64 MiB / 3 iterations)
FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
PW = "correct horse battery staple"
PW2 = "tr0ub4dor&3 but longer"
#: the digest of "the repository config" the slots are bound to
CFG = blake3.blake3(b"a repository config").digest()


class MemoryBackend(Backend):
    """A dict-based test double of the storage interface."""

    capabilities = Capabilities(atomic_create=True, local=True)

    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"memory://{self.name}"

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[validate_key(key)] = (bytes(data), time.time())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._lock:
            if validate_key(key) in self.objects:
                return False
            self.objects[key] = (bytes(data), time.time())
            return True

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self.objects[validate_key(key)][0]
            except KeyError:
                raise ObjectNotFound(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.get(key)[offset : offset + length]

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            try:
                data, mtime = self.objects[validate_key(key)]
            except KeyError:
                raise ObjectNotFound(key) from None
        return ObjectInfo(key, len(data), mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        with self._lock:
            items = [(k, v) for k, v in self.objects.items() if k.startswith(prefix)]
        for key, (data, mtime) in items:
            yield ObjectInfo(key, len(data), mtime)

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(validate_key(key), None)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def keys(backend: MemoryBackend) -> Keys:
    return init_keys(backend, PW, config_digest=CFG, comment="first", kdf_params=FAST)


def slot_keys(backend: MemoryBackend) -> list[str]:
    return sorted(k for k in backend.objects if k.startswith("keys/"))


def slot_doc(raw: bytes) -> dict[str, Any]:
    """The JSON of a format-2 slot (its checksum checked)."""
    doc: dict[str, Any] = json.loads(raw)
    assert doc["checksum"] == crypto._checksum(doc)
    return doc


def put_slot(backend: MemoryBackend, key: str, doc: dict[str, Any]) -> None:
    """Store a slot document with its checksum recomputed (as whoever edits it by hand can)."""
    backend.put(key, json.dumps(dict(doc, checksum=crypto._checksum(doc))).encode())


# --- sealing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 1 << 20])
def test_seal_open_round_trip(keys: Keys, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    blob = keys.seal(data, b"chunk:1")
    assert len(blob) == len(data) + crypto.OVERHEAD
    assert keys.open(blob, b"chunk:1", "chunk 1") == data
    if size >= 16:
        assert data not in blob


def test_seal_uses_a_fresh_nonce_each_time(keys: Keys) -> None:
    a, b = keys.seal(b"same", b""), keys.seal(b"same", b"")
    assert a != b
    assert a[: crypto.NONCE_SIZE] != b[: crypto.NONCE_SIZE]


@pytest.mark.parametrize(
    "index", [0, crypto.NONCE_SIZE - 1, crypto.NONCE_SIZE, crypto.NONCE_SIZE + 5, -crypto.TAG_SIZE, -1]
)
def test_tampered_blob_is_an_integrity_error(keys: Keys, index: int) -> None:
    """Flipping a bit of the nonce (0..11), the ciphertext or the tag (last 16) is detected."""
    blob = bytearray(keys.seal(b"some plaintext bytes", b"aad"))
    blob[index] ^= 0x01
    with pytest.raises(IntegrityError, match=r"decryption failed for pack 1f2e") as info:
        keys.open(bytes(blob), b"aad", "pack 1f2e")
    assert info.value.exit_code == 3


def test_wrong_aad_is_an_integrity_error(keys: Keys) -> None:
    blob = keys.seal(b"payload", b"chunk:aaaa")
    with pytest.raises(IntegrityError, match="decryption failed for chunk bbbb"):
        keys.open(blob, b"chunk:bbbb", "chunk bbbb")


@pytest.mark.parametrize("length", [0, 1, crypto.OVERHEAD - 1])
def test_truncated_blob_is_an_integrity_error(keys: Keys, length: int) -> None:
    blob = keys.seal(b"payload", b"")
    with pytest.raises(IntegrityError, match="decryption failed for index 7"):
        keys.open(blob[:length], b"", "index 7")


def test_blob_from_another_repository_does_not_open(keys: Keys) -> None:
    other = init_keys(MemoryBackend("other"), PW, config_digest=CFG, kdf_params=FAST)
    with pytest.raises(IntegrityError):
        other.open(keys.seal(b"payload", b""), b"", "blob")


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2048), aad=st.binary(max_size=64), flip=st.integers(min_value=0))
def test_round_trip_and_any_bit_flip_property(data: bytes, aad: bytes, flip: int) -> None:
    keys = Keys.generate()
    blob = keys.seal(data, aad)
    assert keys.open(blob, aad, "x") == data
    tampered = bytearray(blob)
    tampered[flip % len(blob)] ^= 1 << (flip % 8)
    with pytest.raises(IntegrityError):
        keys.open(bytes(tampered), aad, "x")


def test_keys_are_shared_safely_between_threads(keys: Keys) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                payload = f"{n}:{i}".encode() * 100
                aad = f"{n}/{i}".encode()
                assert keys.open(keys.seal(payload, aad), aad, "t") == payload
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_keys_constructor_checks_sizes() -> None:
    with pytest.raises(ValueError):
        Keys(b"x" * 16, b"y" * 32)
    with pytest.raises(ValueError):
        Keys(b"x" * 32, b"x" * 32)


# --- chunk ids ----------------------------------------------------------------------------------


def test_keyed_ids_are_stable_within_a_repository(backend: MemoryBackend, keys: Keys) -> None:
    data = b"the same chunk" * 1000
    reopened = open_keys(backend, PW, config_digest=CFG)
    assert keys.chunk_id(data) == keys.chunk_id(data) == reopened.chunk_id(data)
    assert len(keys.chunk_id(data)) == 32
    assert keys.chunk_id(data) != keys.chunk_id(data + b"!")


def test_keyed_ids_differ_between_repositories(keys: Keys) -> None:
    other = init_keys(
        MemoryBackend("other"), PW, config_digest=CFG, kdf_params=FAST
    )  # same passphrase, new keys
    data = b"the same chunk" * 1000
    assert keys.chunk_id(data) != other.chunk_id(data)
    assert keys.chunk_id(data) != blake3.blake3(data).digest()


def test_plain_keys() -> None:
    plain = PlainKeys()
    data = b"plain data" * 100
    assert plain.encrypted is False
    assert plain.chunk_id(data) == blake3.blake3(data).digest()
    assert plain.seal(data, b"aad") == data
    assert plain.open(data, b"aad", "x") == data
    assert repr(plain) == "PlainKeys(encrypted=False)"


def test_both_implement_the_keyring_protocol(keys: Keys) -> None:
    def ids(ring: KeyRing, data: bytes) -> tuple[bool, bytes]:
        return ring.encrypted, ring.open(ring.seal(data, b"a"), b"a", "x")

    assert ids(keys, b"d") == (True, b"d")
    assert ids(PlainKeys(), b"d") == (False, b"d")


# --- key slots ----------------------------------------------------------------------------------


def test_init_writes_one_slot_and_open_returns_the_same_keys(backend: MemoryBackend, keys: Keys) -> None:
    [key] = slot_keys(backend)
    assert key == f"keys/{keys.slot_id}"
    opened = open_keys(backend, PW, config_digest=CFG)
    assert opened.slot_id == keys.slot_id
    assert opened.same_keys(keys)
    assert opened.open(keys.seal(b"x", b"a"), b"a", "x") == b"x"


def test_init_refuses_an_existing_repository(backend: MemoryBackend, keys: Keys) -> None:
    with pytest.raises(RepositoryExists):
        init_keys(backend, PW2, config_digest=CFG, kdf_params=FAST)
    assert len(slot_keys(backend)) == 1


def test_empty_passphrase_is_refused(backend: MemoryBackend) -> None:
    with pytest.raises(UsageError):
        init_keys(backend, "", config_digest=CFG, kdf_params=FAST)
    assert slot_keys(backend) == []


def test_wrong_passphrase(backend: MemoryBackend, keys: Keys) -> None:
    with pytest.raises(WrongPassword) as info:
        open_keys(backend, "not the passphrase", config_digest=CFG)
    message = info.value.message
    assert "memory://mem" in message and "1 key slot tried" in message
    assert "not the passphrase" not in message and PW not in message
    assert info.value.exit_code == 2


def test_add_slot_then_open_with_either(backend: MemoryBackend, keys: Keys) -> None:
    new_id = add_slot(backend, keys, PW2, "backup admin", kdf_params=FAST)
    assert len(slot_keys(backend)) == 2
    first, second = open_keys(backend, PW, config_digest=CFG), open_keys(backend, PW2, config_digest=CFG)
    assert first.slot_id == keys.slot_id and second.slot_id == new_id
    assert first.same_keys(second)
    assert second.open(first.seal(b"data", b"a"), b"a", "x") == b"data"
    with pytest.raises(WrongPassword, match="2 key slots tried"):
        open_keys(backend, "neither", config_digest=CFG)


def test_rotation_remove_old_slot(backend: MemoryBackend, keys: Keys) -> None:
    sealed = keys.seal(b"old data", b"a")
    new_id = add_slot(backend, keys, PW2, kdf_params=FAST)
    assert keys.slot_id is not None
    remove_slot(backend, keys, keys.slot_id)
    assert slot_keys(backend) == [f"keys/{new_id}"]
    with pytest.raises(WrongPassword):
        open_keys(backend, PW, config_digest=CFG)
    rotated = open_keys(backend, PW2, config_digest=CFG)
    assert rotated.open(sealed, b"a", "x") == b"old data"  # the data key did not change


def test_refuse_removing_the_last_slot(backend: MemoryBackend, keys: Keys) -> None:
    assert keys.slot_id is not None
    with pytest.raises(UsageError, match="last one"):
        remove_slot(backend, keys, keys.slot_id)
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)


def test_remove_unknown_slot(backend: MemoryBackend, keys: Keys) -> None:
    with pytest.raises(NotFound):
        remove_slot(backend, keys, "0123456789abcdef")
    with pytest.raises(NotFound):
        remove_slot(backend, keys, "../config")


def test_list_slots(backend: MemoryBackend, keys: Keys) -> None:
    new_id = add_slot(backend, keys, PW2, "second", kdf_params=FAST)
    slots = list_slots(backend)
    assert [s.slot_id for s in slots] == [keys.slot_id, new_id]
    assert [s.comment for s in slots] == ["first", "second"]
    assert slots[0].created <= slots[1].created
    assert slots[0].created.tzinfo is not None
    assert slots[0].kdf == FAST
    assert slots[0].hostname


def test_slot_json_format_and_no_passphrase(backend: MemoryBackend, keys: Keys) -> None:
    [key] = slot_keys(backend)
    raw = backend.get(key)
    doc = slot_doc(raw)
    assert set(doc) == {
        "version",
        "id",
        "created",
        "hostname",
        "comment",
        "config",
        "config_mac",
        "kdf",
        "wrap",
        "checksum",
    }
    assert doc["version"] == 2 and doc["id"] == key.removeprefix("keys/")
    assert doc["config"] == CFG.hex()
    assert doc["kdf"]["name"] == "argon2id"
    assert {k: doc["kdf"][k] for k in ("memory_kib", "iterations", "lanes")} == {
        "memory_kib": 8192,
        "iterations": 1,
        "lanes": 1,
    }
    assert doc["wrap"]["cipher"] == "aes-256-gcm"
    assert PW.encode() not in raw
    for secret in (keys._data_key, keys._id_key):
        assert secret not in raw
        assert crypto._b64(secret).encode() not in raw


def test_repr_has_no_secrets(keys: Keys) -> None:
    text = repr(keys) + str(keys)
    assert PW not in text
    assert keys._data_key.hex() not in text and keys._id_key.hex() not in text
    assert str(keys._data_key) not in text
    with pytest.raises(TypeError):
        pickle.dumps(keys)


def test_default_kdf_cost() -> None:
    assert KdfParams() == KdfParams(memory_kib=65536, iterations=3, lanes=1)


def test_passphrase_is_unicode_normalised(backend: MemoryBackend) -> None:
    composed = "caf\u00e9 passphrase"
    init_keys(backend, composed, config_digest=CFG, kdf_params=FAST)
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    open_keys(backend, decomposed, config_digest=CFG)


def test_slot_copied_to_another_id_does_not_open(backend: MemoryBackend, keys: Keys) -> None:
    """The slot id is in the wrap's associated data: renaming a slot (id fixed up) breaks it."""
    [key] = slot_keys(backend)
    doc = slot_doc(backend.get(key))
    doc["id"] = "00000000000000aa"
    put_slot(backend, "keys/00000000000000aa", doc)
    backend.delete(key)
    with pytest.raises(WrongPassword):
        open_keys(backend, PW, config_digest=CFG)


def test_unusable_slots_are_skipped(backend: MemoryBackend, keys: Keys) -> None:
    """An intact slot (checksum right) that cannot be used, and a non-slot name, are skipped."""
    put_slot(backend, "keys/ffffffffffffffff", {"version": 2, "id": "ffffffffffffffff"})
    backend.put("keys/README", b"not a slot name")
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)
    assert [s.slot_id for s in list_slots(backend)] == [keys.slot_id]
    with pytest.raises(WrongPassword, match=r"1 unreadable slot.*ffffffffffffffff"):
        open_keys(backend, PW2, config_digest=CFG)


def flip(backend: MemoryBackend, key: str, at: int) -> None:
    data = bytearray(backend.get(key))
    data[at % len(data)] ^= 0x01
    backend.put(key, bytes(data))


@pytest.mark.parametrize("where", ["salt", "ciphertext", "comment", "checksum", "version", "truncated"])
def test_a_damaged_slot_is_named_as_damaged_not_wrong_passphrase(
    backend: MemoryBackend, keys: Keys, where: str
) -> None:
    """A flipped byte anywhere in a slot (the base64 of the wrapped keys included: a format-1 slot
    read that as a wrong passphrase) is "damaged", exit 3, naming the slot."""
    key = f"keys/{keys.slot_id}"
    raw = backend.get(key)
    if where == "truncated":
        backend.put(key, raw[:-7])
    else:
        text = raw.decode()
        at = {"salt": text.index('"salt"') + 12, "ciphertext": text.index('"ciphertext"') + 20,
              "comment": text.index('"first"') + 2, "checksum": text.index('"checksum"') + 20,
              "version": text.index('"version"') + 11}[where]  # fmt: skip
        flip(backend, key, at)  # XOR 0x01: still valid JSON, only the checksum can tell
    detail = "damaged (not a JSON document)" if where == "truncated" else "damaged (checksum mismatch)"
    with pytest.raises(IntegrityError, match=rf"keys/{keys.slot_id}: {re.escape(detail)}") as info:
        open_keys(backend, PW, config_digest=CFG)
    assert info.value.exit_code == 3 and "wrong passphrase" not in info.value.message
    problems, _ = crypto.check_slots(backend, CFG)
    assert problems == [(key, detail)]


def test_damaged_second_slot_with_its_passphrase(backend: MemoryBackend, keys: Keys) -> None:
    """Two slots: the intact one still opens with its passphrase; the damaged one's passphrase
    gets "damaged" naming the slot, not "wrong passphrase"."""
    second = add_slot(backend, keys, PW2, kdf_params=FAST)
    flip(backend, f"keys/{second}", 100)
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)
    with pytest.raises(IntegrityError, match=rf"damaged.*keys/{second}: damaged") as info:
        open_keys(backend, PW2, config_digest=CFG)
    assert info.value.exit_code == 3


def test_a_slot_authenticates_the_config(backend: MemoryBackend, keys: Keys) -> None:
    """The right passphrase with another config (digest) is refused, naming the config."""
    other = blake3.blake3(b"a changed repository config").digest()
    with pytest.raises(IntegrityError, match="repository config of memory://mem was changed") as info:
        open_keys(backend, PW, config_digest=other)
    assert info.value.exit_code == 3
    problems, _ = crypto.check_slots(backend, other)
    assert [p[0] for p in problems] == [f"keys/{keys.slot_id}"] and "another repository config" in problems[
        0
    ][1]
    assert crypto.check_slots(backend, CFG) == ([], [])


def test_the_config_binding_cannot_be_edited(backend: MemoryBackend, keys: Keys) -> None:
    """Rewriting a slot's config digest (checksum recomputed) breaks its wrap: the attacker who
    changed the config cannot make the slot agree."""
    key = f"keys/{keys.slot_id}"
    doc = slot_doc(backend.get(key))
    other = blake3.blake3(b"a changed repository config").digest()
    doc["config"] = other.hex()
    put_slot(backend, key, doc)
    with pytest.raises(WrongPassword):
        open_keys(backend, PW, config_digest=other)


def test_a_format_2_slot_cannot_pass_for_format_1(backend: MemoryBackend, keys: Keys) -> None:
    """Stripping the checksum and the config binding (version set to 1) breaks the wrap too."""
    key = f"keys/{keys.slot_id}"
    doc = slot_doc(backend.get(key))
    doc["version"] = 1
    del doc["config"], doc["config_mac"], doc["checksum"]
    backend.put(key, json.dumps(doc).encode())
    with pytest.raises(WrongPassword):
        open_keys(backend, PW, config_digest=blake3.blake3(b"a changed repository config").digest())


def test_format_1_slot_opens_and_is_upgraded_in_place(backend: MemoryBackend, keys: Keys) -> None:
    """A slot as an older coldkeep wrote it opens; it is rewritten as format 2 (same id, created
    time and comment), bound to the config it was opened with, which is checked from then on."""
    slot_id = "00aa00aa00aa00aa"
    backend.objects.clear()
    backend.put(f"keys/{slot_id}", legacy_key_slot(keys, PW, slot_id))
    assert crypto.check_slots(backend, CFG)[1] == [
        f"key slot keys/{slot_id} is format 1 (no checksum, does not authenticate the config): "
        "opening the repository with its passphrase upgrades it"
    ]
    opened = open_keys(backend, PW, config_digest=CFG)
    assert opened.same_keys(keys) and opened.slot_id == slot_id and opened.config_digest == CFG
    assert slot_keys(backend) == [f"keys/{slot_id}"]
    doc = slot_doc(backend.get(f"keys/{slot_id}"))
    assert doc["version"] == 2 and doc["config"] == CFG.hex()
    assert doc["created"] == "2025-01-01T00:00:00Z" and doc["comment"] == "written by an older coldkeep"
    assert crypto.check_slots(backend, CFG) == ([], [])
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)
    with pytest.raises(IntegrityError, match="config"):
        open_keys(backend, PW, config_digest=blake3.blake3(b"changed later").digest())


def test_format_1_slot_on_read_only_storage_still_opens(backend: MemoryBackend, keys: Keys) -> None:
    """The upgrade is best effort: storage that refuses the write still opens (slot unchanged)."""
    slot_id = "00aa00aa00aa00aa"
    backend.objects.clear()
    legacy = legacy_key_slot(keys, PW, slot_id)
    backend.put(f"keys/{slot_id}", legacy)

    def refuse(key: str, data: bytes) -> None:
        raise StorageError(f"cannot write {key}: read-only file system")

    backend.put = refuse  # type: ignore[method-assign]
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)
    assert backend.get(f"keys/{slot_id}") == legacy


def test_a_format_1_slot_does_not_open_a_changed_config_next_to_a_format_2_slot(
    backend: MemoryBackend, keys: Keys
) -> None:
    """The second passphrase's slot is still format 1 (its passphrase not used since the upgrade):
    the first slot's config MAC, which only the keys can make, still gives the change away."""
    backend.put("keys/0000000000000002", legacy_key_slot(keys, PW2, "0000000000000002"))
    changed = blake3.blake3(b"changed").digest()
    with pytest.raises(IntegrityError, match=f"not the config key slot {keys.slot_id} was made for"):
        open_keys(backend, PW2, config_digest=changed)
    assert backend.get("keys/0000000000000002").startswith(b"{")  # not upgraded to the changed config
    assert open_keys(backend, PW2, config_digest=CFG).same_keys(keys)  # the original config: fine


def test_check_names_a_planted_slot(backend: MemoryBackend, keys: Keys) -> None:
    """A well-formed slot wrapping someone else's keys, for the same config: `repo check` (which
    has the keys) names it."""
    intruder = Keys.generate()
    intruder.config_digest = CFG
    planted = add_slot(backend, intruder, "the intruder's passphrase", kdf_params=FAST)
    assert crypto.check_slots(backend, CFG)[0] == []  # without the keys it looks fine
    assert crypto.check_slots(backend, CFG, keys)[0] == [
        (f"keys/{planted}", "not written with this repository's keys (planted?)")
    ]
    assert open_keys(backend, PW, config_digest=CFG).same_keys(keys)


def test_format_2_slots_are_tried_before_format_1(backend: MemoryBackend, keys: Keys) -> None:
    """An older slot for the same passphrase put back next to an upgraded one does not bypass
    the config check: format 2 is tried first."""
    backend.put("keys/0000000000000001", legacy_key_slot(keys, PW, "0000000000000001"))
    with pytest.raises(IntegrityError, match="config"):
        open_keys(backend, PW, config_digest=blake3.blake3(b"changed").digest())


def test_only_unreadable_slots(backend: MemoryBackend) -> None:
    backend.put("keys/ffffffffffffffff", b"{}")
    with pytest.raises(IntegrityError, match="no usable key slot"):
        open_keys(backend, PW, config_digest=CFG)


def test_no_slots(backend: MemoryBackend) -> None:
    with pytest.raises(RepositoryError, match="no key slots"):
        open_keys(backend, PW, config_digest=CFG)


def test_newer_slot_format(backend: MemoryBackend) -> None:
    backend.put("keys/eeeeeeeeeeeeeeee", json.dumps({"version": 3}).encode())
    with pytest.raises(UnsupportedFormat, match="version 3"):
        open_keys(backend, PW, config_digest=CFG)


def test_kdf_parameters_are_bounded_when_read(backend: MemoryBackend, keys: Keys) -> None:
    """A planted slot cannot make open_keys allocate absurd memory."""
    [key] = slot_keys(backend)
    doc = slot_doc(backend.get(key))
    doc["kdf"]["memory_kib"] = 1 << 40
    put_slot(backend, key, doc)
    with pytest.raises(IntegrityError, match="memory_kib"):
        open_keys(backend, PW, config_digest=CFG)


def test_kdf_parameters_are_checked_when_written(backend: MemoryBackend) -> None:
    with pytest.raises(ValueError):
        init_keys(backend, PW, config_digest=CFG, kdf_params=KdfParams(memory_kib=4, iterations=1))
    with pytest.raises(ValueError):
        init_keys(backend, PW, config_digest=CFG, kdf_params=KdfParams(iterations=0))


# --- passphrase sources -------------------------------------------------------------------------


def test_env_wins_over_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from file\n")
    assert read_passphrase(str(f), {"COLDKEEP_PASSWORD": "from env"}) == "from env"
    assert read_passphrase("", {"COLDKEEP_PASSWORD": "from env"}) == "from env"
    assert read_passphrase(str(f), {"COLDKEEP_PASSWORD": ""}) == "from file"  # empty = unset
    assert read_passphrase(str(f), {}) == "from file"


def test_no_source_gives_none() -> None:
    assert read_passphrase("", {}) is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"secret\n", "secret"),
        (b"secret", "secret"),
        (b"secret\r\n", "secret"),
        (b"secret\n\n", "secret\n"),  # only one newline is stripped
        (b" spaced secret \n", " spaced secret "),
        ("p\u00e4ss\n".encode(), "p\u00e4ss"),
    ],
)
def test_file_content_newline_stripping(tmp_path: Path, content: bytes, expected: str) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    assert read_passphrase(str(f), {}) == expected


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match="is empty") as info:
        read_passphrase(str(f), {})
    assert str(f) in info.value.message
    assert info.value.exit_code == 2


def test_missing_or_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match="cannot read password_file") as info:
        read_passphrase(str(missing), {})
    assert str(missing) in info.value.message
    with pytest.raises(ConfigError, match="cannot read password_file"):
        read_passphrase(str(tmp_path), {})  # a directory: unreadable as a file, even for root


def test_non_utf8_file_does_not_echo_content(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"s3cr\xffet\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        read_passphrase(str(f), {})
    assert "s3cr" not in info.value.message and "s3cr" not in info.value.hint
