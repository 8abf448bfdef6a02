"""Repository keys: key slots, authenticated encryption and keyed chunk ids.

Keys
----
An encrypted repository has exactly two secrets, both 32 random bytes from ``os.urandom`` made once
by :func:`init_keys` and never changed afterwards (so no data ever needs rewriting):

* the **data key**, used with AES-256-GCM for every object the repository stores (chunks, packs,
  indexes, snapshots): :meth:`Keys.seal` / :meth:`Keys.open`;
* the **id key**, used with keyed BLAKE3 to name chunks: :meth:`Keys.chunk_id` is
  ``blake3(data, key=id_key)``, a MAC, so a chunk id reveals nothing about the content (no one
  without the key can confirm a guess such as "this repository holds file X").

An unencrypted repository uses :class:`PlainKeys` instead: ``seal``/``open`` return their input
unchanged and ``chunk_id`` is the unkeyed BLAKE3 digest.  Both implement the :class:`KeyRing`
protocol, so the rest of coldkeep never asks which one it has (except through ``encrypted``).
Without encryption nothing is authenticated here; integrity then rests on the caller checking that
a chunk hashes to its id.

Sealed format
-------------
``seal(plaintext, aad)`` returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``, i.e. 28 bytes
of overhead.  ``aad`` (associated data) is authenticated but not stored: callers pass what the blob
*is* (e.g. its type and id) so a blob cannot be swapped for another one that is also genuine.
``open`` raises :class:`~coldkeep.errors.IntegrityError` ("decryption failed for <what>") on any
mismatch: tampered nonce, ciphertext or tag, wrong aad, wrong key, truncated blob.

Nonces are 96 random bits, generated per message.  With random nonces the conventional limit
(NIST SP 800-38D, section 8.3) is 2**32 messages per key, which keeps the chance of a repeated
nonce below 2**-32; the collision probability for ``n`` messages is about ``n**2 / 2**97``.  The data
key never changes, so this budget is for the repository's whole life, counting every object ever
sealed (including ones later pruned).  A multi-TB repository with 1 MiB chunks holds about 10**7
chunks (probability about 10**-15); reaching 2**32 would take about 4 PiB of new chunks.

``cryptography``'s ``AESGCM`` object is shared between threads: it is a frozen (immutable) Rust
object that copies a pre-initialised OpenSSL context for every call and only reads its own state
(pyca/cryptography ``src/rust/src/backend/aead.rs``; maintainers in pyca/cryptography#9110: cipher
objects "are stateless, they can be shared/reused without regard to thread safety").

Key slots
---------
Each passphrase is one *key slot*, a small JSON document at ``keys/<slot-id>`` (slot id: 16 random
hex characters)::

    {
      "version": 1,
      "id": "3f2a9c0e71b4d5a8",
      "created": "2026-11-26T08:00:00Z",
      "hostname": "gpu-box-1",
      "comment": "lab admin",
      "kdf": {"name": "argon2id", "salt": "<base64, 16 bytes>", "memory_kib": 65536,
              "iterations": 3, "lanes": 1},
      "wrap": {"cipher": "aes-256-gcm", "nonce": "<base64, 12 bytes>",
               "ciphertext": "<base64: data key || id key, 64 bytes, + 16-byte tag>"}
    }

The passphrase (UTF-8, NFC-normalised so the same text typed on different systems matches) goes
through Argon2id with the slot's salt and parameters to a 32-byte key-encryption key; that key
seals ``data key || id key`` with AES-256-GCM under a random 12-byte nonce and associated data
``b"coldkeep-keyslot-v1" + slot id`` (so a slot file copied to another id does not open).  Default
KDF cost: 64 MiB, 3 iterations, 1 lane (about 0.25 s on one core); :class:`KdfParams` makes it
configurable.  Parameters read from a slot are bounded (:data:`MAX_MEMORY_KIB` etc.) so a planted
slot cannot make ``open`` exhaust memory.  A slot never holds the passphrase or anything from which
it could be checked faster than by running Argon2id.

* **add** a passphrase = write a new slot wrapping the same two keys (:func:`add_slot`);
* **remove** one = delete its slot (:func:`remove_slot`); the last slot is never removed, since
  that would make the repository unreadable;
* **list** = slot id, created time, host, comment, KDF cost (:func:`list_slots`); no passphrase
  needed, nothing secret shown.

**Opening** (:func:`open_keys`) tries every slot in creation order until one unwraps.  Every salt
is different, so each try costs a full Argon2id run: with the default cost, opening costs about
0.25 s per slot tried, and a wrong passphrase costs that times the number of slots.  Repositories
have a handful of slots, so no per-slot hint is stored (a hint would need the KDF run anyway, since
the salts differ, and would only leak a fast passphrase check).

**Rotation** without rewriting data = add a slot with the new passphrase, then remove the old
slot.  This rotates *passphrases*, not the data key: whoever once read the data key (had an old
passphrase and a copy of its slot, or a memory dump of a running coldkeep) can still decrypt
everything, old and new, and anyone holding an old copy of the removed slot file can still open it
with the old passphrase.  Changing the data key means re-encrypting the repository into a new one
(``coldkeep repo copy`` to a freshly initialised repository).

Limits: slots are not authenticated against anything else in the repository, so someone with write
access to ``keys/`` can add a slot of their own (wrapping keys they know); they still cannot open
the user's data.  Python cannot reliably wipe secrets from memory.  Slot changes must run under the
repository's exclusive lock (two concurrent removals could otherwise remove the last two slots).

Passphrase sources (:func:`read_passphrase`): ``COLDKEEP_PASSWORD`` if set and not empty, else the
content of ``[repository].password_file`` with one trailing newline removed.  The passphrase never
appears in a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import socket
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import blake3

from coldkeep import clock
from coldkeep.errors import (
    ColdkeepError,
    ConfigError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    RepositoryError,
    RepositoryExists,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from coldkeep.storage.base import Backend

log = logging.getLogger(__name__)

__all__ = [
    "KEYS_PREFIX",
    "PASSWORD_ENV",
    "KdfParams",
    "KeyRing",
    "Keys",
    "PlainKeys",
    "SlotInfo",
    "add_slot",
    "init_keys",
    "list_slots",
    "open_keys",
    "read_passphrase",
    "remove_slot",
]

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
#: bytes ``seal`` adds to a plaintext (nonce + tag)
OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
SALT_SIZE: Final = 16

SLOT_VERSION: Final = 1
KEYS_PREFIX: Final = "keys/"
SLOT_AAD_PREFIX: Final = b"coldkeep-keyslot-v1"
PASSWORD_ENV: Final = "COLDKEEP_PASSWORD"

#: bounds on KDF parameters, checked when creating and when reading a slot
MIN_MEMORY_KIB: Final = 8
MAX_MEMORY_KIB: Final = 4 * 1024 * 1024  # 4 GiB
MAX_ITERATIONS: Final = 64
MAX_LANES: Final = 64

_SLOT_ID = re.compile(r"^[0-9a-f]{16}$")


# ------------------------------------------------------------------------------------------------
# key rings


class KeyRing(Protocol):
    """What the repository needs from its keys, encrypted or not."""

    @property
    def encrypted(self) -> bool: ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes | memoryview: ...

    def chunk_id(self, data: bytes) -> bytes: ...


class Keys:
    """The keys of an encrypted repository.  Safe to share between threads.

    ``slot_id`` is the slot the keys were opened from or first written to (``None`` for keys made
    directly with :meth:`generate` or the constructor).  ``repr`` never shows key material, and
    pickling is refused so keys do not leak into a pickle by accident.
    """

    __slots__ = ("_aead", "_data_key", "_id_key", "slot_id")

    def __init__(self, data_key: bytes, id_key: bytes, *, slot_id: str | None = None) -> None:
        if len(data_key) != KEY_SIZE or len(id_key) != KEY_SIZE:
            raise ValueError(f"keys must be {KEY_SIZE} bytes")
        if data_key == id_key:
            raise ValueError("the data key and the id key must differ")
        self._data_key = bytes(data_key)
        self._id_key = bytes(id_key)
        # ``cryptography`` is imported where it is used: an unencrypted repository never needs it,
        # and ``pg wal-push`` (one process per WAL segment) should not pay for importing it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(self._data_key)
        self.slot_id = slot_id

    @classmethod
    def generate(cls) -> Keys:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    @property
    def encrypted(self) -> bool:
        return True

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag``; ``aad`` is authenticated, not stored."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """The plaintext of ``blob`` sealed with the same ``aad``; ``what`` names it in errors."""
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"decryption failed for {what} (truncated: {len(blob)} bytes)")
        from cryptography.exceptions import InvalidTag

        view = memoryview(blob)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise IntegrityError(f"decryption failed for {what}") from None

    def chunk_id(self, data: bytes) -> bytes:
        """Keyed BLAKE3 (a MAC) of ``data``, 32 bytes."""
        return blake3.blake3(data, key=self._id_key).digest()

    def _material(self) -> bytes:
        return self._data_key + self._id_key

    def same_keys(self, other: Keys) -> bool:
        return secrets.compare_digest(self._material(), other._material())

    def __repr__(self) -> str:
        return f"Keys(encrypted=True, slot_id={self.slot_id!r})"

    def __reduce__(self) -> Any:  # keep secrets out of pickles made by accident
        raise TypeError("Keys cannot be pickled")


class PlainKeys:
    """The key ring of an unencrypted repository: identity ``seal``/``open``, unkeyed BLAKE3 ids."""

    __slots__ = ()

    @property
    def encrypted(self) -> bool:
        return False

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext

    def open(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes | memoryview:
        return blob

    def chunk_id(self, data: bytes) -> bytes:
        return blake3.blake3(data).digest()

    def __repr__(self) -> str:
        return "PlainKeys(encrypted=False)"


# ------------------------------------------------------------------------------------------------
# key slots


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost.  ``memory_kib`` is in KiB (65536 = 64 MiB)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 1

    def check(self) -> KdfParams:
        if not MIN_MEMORY_KIB * self.lanes <= self.memory_kib <= MAX_MEMORY_KIB:
            raise ValueError(
                f"argon2id memory_kib must be in {MIN_MEMORY_KIB * self.lanes}..{MAX_MEMORY_KIB}"
            )
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"argon2id iterations must be in 1..{MAX_ITERATIONS}")
        if not 1 <= self.lanes <= MAX_LANES:
            raise ValueError(f"argon2id lanes must be in 1..{MAX_LANES}")
        return self


@dataclass(frozen=True)
class SlotInfo:
    """What ``repo key list`` shows about a slot (nothing secret)."""

    slot_id: str
    created: datetime
    hostname: str
    comment: str
    kdf: KdfParams


@dataclass(frozen=True)
class _Slot:
    info: SlotInfo
    salt: bytes
    nonce: bytes
    wrapped: bytes


class _BadSlot(Exception):
    """A slot document that cannot be used (reason in args[0]; never secret)."""


class _NewerSlot(_BadSlot):
    def __init__(self, found: int) -> None:
        super().__init__(f"format version {found}")
        self.found = found


def _slot_key(slot_id: str) -> str:
    return KEYS_PREFIX + slot_id


def _slot_aad(slot_id: str) -> bytes:
    return SLOT_AAD_PREFIX + slot_id.encode("ascii")


def _encode_passphrase(passphrase: str) -> bytes:
    if not passphrase:
        raise UsageError("the passphrase is empty", hint="choose a non-empty passphrase")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(_encode_passphrase(passphrase))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(doc: Mapping[str, Any], field: str, size: int | None = None) -> bytes:
    value = doc.get(field)
    if not isinstance(value, str):
        raise _BadSlot(f"{field} missing")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _BadSlot(f"{field} is not base64") from None
    if size is not None and len(raw) != size:
        raise _BadSlot(f"{field} has {len(raw)} bytes, expected {size}")
    return raw


def _make_slot(keys: Keys, passphrase: str, comment: str, params: KdfParams) -> tuple[str, bytes]:
    params.check()
    slot_id = secrets.token_hex(8)
    salt = os.urandom(SALT_SIZE)
    kek = _derive(passphrase, salt, params)
    nonce = os.urandom(NONCE_SIZE)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    wrapped = AESGCM(kek).encrypt(nonce, keys._material(), _slot_aad(slot_id))
    doc = {
        "version": SLOT_VERSION,
        "id": slot_id,
        "created": clock.isoformat(clock.now()),
        "hostname": socket.gethostname(),
        "comment": comment,
        "kdf": {
            "name": "argon2id",
            "salt": _b64(salt),
            "memory_kib": params.memory_kib,
            "iterations": params.iterations,
            "lanes": params.lanes,
        },
        "wrap": {"cipher": "aes-256-gcm", "nonce": _b64(nonce), "ciphertext": _b64(wrapped)},
    }
    return slot_id, (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _write_slot(backend: Backend, keys: Keys, passphrase: str, comment: str, params: KdfParams) -> str:
    for _ in range(3):  # a 64-bit id collision is (practically) impossible; retry anyway
        slot_id, data = _make_slot(keys, passphrase, comment, params)
        if backend.put_if_absent(_slot_key(slot_id), data):
            log.info("wrote key slot %s", slot_id)
            return slot_id
    raise RepositoryError(f"could not create a key slot in {backend.describe()} (slot id collisions)")


def _parse_slot(slot_id: str, data: bytes) -> _Slot:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _BadSlot("not JSON") from None
    if not isinstance(doc, dict):
        raise _BadSlot("not a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _BadSlot("version missing")
    if version > SLOT_VERSION:
        raise _NewerSlot(version)
    if version != SLOT_VERSION:
        raise _BadSlot(f"unknown format version {version}")
    if doc.get("id") != slot_id:
        raise _BadSlot("id does not match the object name")
    kdf, wrap = doc.get("kdf"), doc.get("wrap")
    if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
        raise _BadSlot("kdf is not argon2id")
    if not isinstance(wrap, dict) or wrap.get("cipher") != "aes-256-gcm":
        raise _BadSlot("wrap cipher is not aes-256-gcm")
    numbers: list[int] = []
    for field in ("memory_kib", "iterations", "lanes"):
        value = kdf.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _BadSlot(f"kdf {field} missing")
        numbers.append(value)
    try:
        params = KdfParams(*numbers).check()
    except ValueError as exc:
        raise _BadSlot(str(exc)) from None
    salt = _unb64(kdf, "salt")
    if not 8 <= len(salt) <= 64:
        raise _BadSlot("kdf salt has a bad length")
    created_text = doc.get("created")
    try:
        created = clock.parse_timestamp(created_text) if isinstance(created_text, str) else None
    except ColdkeepError:
        created = None
    if created is None:
        raise _BadSlot("created missing")
    hostname, comment = doc.get("hostname", ""), doc.get("comment", "")
    if not isinstance(hostname, str) or not isinstance(comment, str):
        raise _BadSlot("hostname/comment are not strings")
    return _Slot(
        info=SlotInfo(slot_id, created, hostname, comment, params),
        salt=salt,
        nonce=_unb64(wrap, "nonce", NONCE_SIZE),
        wrapped=_unb64(wrap, "ciphertext", 2 * KEY_SIZE + TAG_SIZE),
    )


def _slot_ids(backend: Backend) -> list[str]:
    ids = []
    for info in backend.list(KEYS_PREFIX):
        name = info.key[len(KEYS_PREFIX) :]
        if _SLOT_ID.match(name):
            ids.append(name)
        else:
            log.warning("ignoring %s: not a key slot name", info.key)
    return sorted(ids)


def _read_slots(backend: Backend) -> tuple[list[_Slot], dict[str, _BadSlot]]:
    """Parsed slots in creation order, and the slots that could not be used (by id)."""
    good: list[_Slot] = []
    bad: dict[str, _BadSlot] = {}
    for slot_id in _slot_ids(backend):
        try:
            data = backend.get(_slot_key(slot_id))
        except ObjectNotFound:  # removed between list and get
            continue
        try:
            good.append(_parse_slot(slot_id, data))
        except _BadSlot as exc:
            log.warning("ignoring key slot %s: %s", slot_id, exc.args[0])
            bad[slot_id] = exc
    good.sort(key=lambda s: (s.info.created, s.info.slot_id))
    return good, bad


def _unwrap(slot: _Slot, passphrase: str) -> Keys | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kek = _derive(passphrase, slot.salt, slot.info.kdf)
    try:
        material = AESGCM(kek).decrypt(slot.nonce, slot.wrapped, _slot_aad(slot.info.slot_id))
    except InvalidTag:
        return None
    try:
        return Keys(material[:KEY_SIZE], material[KEY_SIZE:], slot_id=slot.info.slot_id)
    except ValueError:  # authentic but unusable (equal keys): only a hand-made slot can do that
        log.warning("key slot %s unwraps to unusable keys", slot.info.slot_id)
        return None


# ------------------------------------------------------------------------------------------------
# public operations


def init_keys(
    backend: Backend, passphrase: str, *, comment: str = "", kdf_params: KdfParams | None = None
) -> Keys:
    """Generate the repository's keys and write the first slot for ``passphrase``.

    Refuses (:class:`~coldkeep.errors.RepositoryExists`) when ``keys/`` already holds anything.
    """
    _encode_passphrase(passphrase)  # refuse an empty passphrase before doing anything
    if any(True for _ in backend.list(KEYS_PREFIX)):
        raise RepositoryExists(f"{backend.describe()} (it already has key slots)")
    keys = Keys.generate()
    keys.slot_id = _write_slot(backend, keys, passphrase, comment, kdf_params or KdfParams())
    return keys


def open_keys(backend: Backend, passphrase: str) -> Keys:
    """The keys of the first slot (in creation order) that ``passphrase`` opens.

    Costs one Argon2id run per slot tried.  Raises :class:`~coldkeep.errors.WrongPassword` when no
    slot opens, :class:`~coldkeep.errors.UnsupportedFormat` when none opens and some slot is of a
    newer format, :class:`~coldkeep.errors.RepositoryError` when there is no usable slot at all.
    """
    slots, bad = _read_slots(backend)
    for slot in slots:
        keys = _unwrap(slot, passphrase)
        if keys is not None:
            log.debug("opened key slot %s", slot.info.slot_id)
            return keys
    newer = [exc.found for exc in bad.values() if isinstance(exc, _NewerSlot)]
    if newer:
        raise UnsupportedFormat(found=max(newer), supported=SLOT_VERSION)
    where = backend.describe()
    if not slots:
        if bad:
            raise IntegrityError(
                f"no usable key slot in {where}: " + ", ".join(f"{k}: {v.args[0]}" for k, v in bad.items())
            )
        raise RepositoryError(f"no key slots in {where} ({KEYS_PREFIX} is empty)")
    detail = f"{where} ({len(slots)} key slot{'s' if len(slots) != 1 else ''} tried"
    if bad:
        detail += f"; {len(bad)} unreadable slot(s) skipped: {', '.join(sorted(bad))}"
    raise WrongPassword(detail + ")")


def add_slot(
    backend: Backend,
    keys: Keys,
    new_passphrase: str,
    comment: str = "",
    *,
    kdf_params: KdfParams | None = None,
) -> str:
    """Add a passphrase: a new slot wrapping ``keys``.  Returns the new slot id."""
    if not isinstance(keys, Keys):
        raise UsageError("the repository is not encrypted; it has no key slots")
    return _write_slot(backend, keys, new_passphrase, comment, kdf_params or KdfParams())


def remove_slot(backend: Backend, keys: Keys, slot_id: str) -> None:
    """Delete slot ``slot_id``; refuses to delete the last usable slot.

    ``keys`` (opened with some passphrase) is the caller's proof that it may change the slots.
    Run under the repository's exclusive lock.
    """
    if not isinstance(keys, Keys):
        raise UsageError("the repository is not encrypted; it has no key slots")
    if not _SLOT_ID.match(slot_id):
        raise NotFound(f"no key slot {slot_id!r} (slot ids are 16 hex characters)")
    slots, bad = _read_slots(backend)
    ids = {s.info.slot_id for s in slots}
    if slot_id not in ids and slot_id not in bad:
        raise NotFound(f"no key slot {slot_id} in {backend.describe()}", hint="see `coldkeep repo key list`")
    if not ids - {slot_id}:
        raise UsageError(
            f"refusing to remove key slot {slot_id}: it is the last one, the repository would become unreadable",
            hint="add another passphrase first (`coldkeep repo key add`)",
        )
    backend.delete(_slot_key(slot_id))
    log.info("removed key slot %s", slot_id)


def list_slots(backend: Backend) -> list[SlotInfo]:
    """Every usable slot, in creation order (unusable ones are logged and left out)."""
    slots, _ = _read_slots(backend)
    return [s.info for s in slots]


# ------------------------------------------------------------------------------------------------
# passphrase sources


def read_passphrase(
    password_file: str, env: Mapping[str, str] = os.environ, *, env_var: str = PASSWORD_ENV
) -> str | None:
    """The repository passphrase: ``$COLDKEEP_PASSWORD`` if set and non-empty, else the content of
    ``password_file`` (UTF-8) minus one trailing newline, else ``None`` (no file configured).

    Errors name the file, never its content.
    """
    from_env = env.get(env_var)
    if from_env:
        return from_env
    if not password_file:
        return None
    path = Path(password_file).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read password_file {password_file}: {exc.strerror or type(exc).__name__}",
            hint=f"check that the file exists and is readable by this user, or set {env_var}",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"password_file {password_file} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(
            f"password_file {password_file} is empty",
            hint="write the passphrase into it (one line), or set " + env_var,
        )
    return text
