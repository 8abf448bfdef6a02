"""Key slots: the repository's two keys wrapped under each passphrase (``keys/<slot-id>``).

The keys themselves, and how objects are sealed with them, are :mod:`coldkeep.repository.crypto`.

Size: over 600 lines, ninety of them the slot format's specification below.  Kept as one module
on purpose: the format, its parser (bounds on every field a planted slot could abuse) and the
operations that rely on its invariants (a format-2 slot always authenticates the config, the last
slot is never removed, a damaged slot is named as damaged) are one security boundary, reviewed
and tested together (``tests/unit/test_crypto.py``); split, a change to one would have to be
checked against another module.

Key slots
---------
Each passphrase is one *key slot* at ``keys/<slot-id>`` (slot id: 16 random hex characters): a JSON
document carrying its own checksum, so damage is seen as damage, by ``repo check`` and by opening,
not as "wrong passphrase"::

    {
      "version": 2,
      "id": "3f2a9c0e71b4d5a8",
      "created": "2026-11-26T08:00:00Z",
      "hostname": "gpu-box-1",
      "comment": "lab admin",
      "config": "<hex: the repository config's footer, i.e. BLAKE3 of the config document>",
      "config_mac": "<hex: keyed BLAKE3 of that digest under a key derived from data and id key>",
      "kdf": {"name": "argon2id", "salt": "<base64, 16 bytes>", "memory_kib": 65536,
              "iterations": 3, "lanes": 1},
      "wrap": {"cipher": "aes-256-gcm", "nonce": "<base64, 12 bytes>",
               "ciphertext": "<base64: data key || id key, 64 bytes, + 16-byte tag>"},
      "checksum": "<hex: BLAKE3 of the other fields as canonical JSON>"
    }

The checksum is inside the document (canonical JSON: sorted keys, no spaces, ASCII), not a
footer, so that an older coldkeep reads ``"version": 2`` and reports a newer format instead of
"not JSON"; later formats keep it, so a damaged version number is "damaged", not "newer".

The passphrase (UTF-8, NFC-normalised so the same text typed on different systems matches) goes
through Argon2id with the slot's salt and parameters to a 32-byte key-encryption key; that key seals
``data key || id key`` with AES-256-GCM under a random 12-byte nonce and associated data
``b"coldkeep-keyslot-v2" + slot id + config digest`` (32 raw bytes).  So a slot copied to another id
does not open, and a slot authenticates the repository config it was made for: the config
(plaintext, footer only, so anyone who can write the store could rewrite it and its footer: flip
``encrypted`` to false so later backups go out in plaintext, or change the chunker) must hash to the
digest the slot that opened carries, else opening fails with an error naming the config
(:func:`open_keys`).  ``config_mac`` (:meth:`Keys.config_mac`) lets whoever holds the keys check
*every* slot's digest, not only the one their passphrase opens: once any slot is format 2, a change
is refused whichever slot opens, a format-1 one included.  The config is write-once, so the digest
never has to change.  Default KDF cost: 64 MiB, 3 iterations, 1 lane (about 0.25 s on one core);
:class:`KdfParams` makes it configurable.  Parameters read from a slot are bounded
(:data:`MAX_MEMORY_KIB` etc.) so a planted slot cannot make ``open`` exhaust memory.  A slot never
holds the passphrase or anything from which it could be checked faster than by running Argon2id.

**Format 1** slots (written before config authentication) are JSON without ``config``,
``config_mac`` and ``checksum``, sealed with associated data ``b"coldkeep-keyslot-v1" + slot id``.
They are still read: opening with a format-1 slot's passphrase accepts the config as it is and
*upgrades* that slot in place (same id, created time, comment and KDF cost; new salt and nonce;
written with ``put``, which replaces atomically), binding it to the config from then on (unless
another slot's ``config_mac`` shows that the config changed: then it is refused like any other
change).  The upgrade is best effort (a read-only copy stays format 1, with a log warning), and
``repo check`` warns about every format-1 slot left.  A format-1 slot cannot authenticate anything;
a v2 slot cannot be turned into one (the version is in the associated data), and slots of format 2
are tried first.  Older coldkeep versions do not read format-2 slots (they report a newer format),
so they refuse an upgraded encrypted repository instead of opening it without checking the config.

* **add** a passphrase = write a new slot wrapping the same two keys, for the same config
  (:func:`add_slot`);
* **remove** one = delete its slot (:func:`remove_slot`); the last slot is never removed, since
  that would make the repository unreadable;
* **list** = slot id, created time, host, comment, KDF cost, format (:func:`list_slots`); no
  passphrase needed, nothing secret shown.

**Opening** (:func:`open_keys`) tries every slot, format 2 first, each in creation order, until one
unwraps.  Every salt is different, so each try costs a full Argon2id run: with the default cost,
opening costs about 0.25 s per slot tried, and a wrong passphrase costs that times the number of
slots.  Repositories have a handful of slots, so no per-slot hint is stored (a hint would need the
KDF run anyway, since the salts differ, and would only leak a fast passphrase check).  When no
intact slot opens and some slot is damaged, the error says so and names it (the passphrase may be
the damaged slot's), with exit code 3, not "wrong passphrase".

**Rotation** without rewriting data = add a slot with the new passphrase, then remove the old
slot.  This rotates *passphrases*, not the data key: whoever once read the data key (had an old
passphrase and a copy of its slot, or a memory dump of a running coldkeep) can still decrypt
everything, old and new, and anyone holding an old copy of the removed slot file can still open it
with the old passphrase.  Changing the data key means re-encrypting the repository into a new one
(``coldkeep repo copy`` to a freshly initialised repository).

Limits: someone with write access to ``keys/`` can add a slot of their own (wrapping keys they
know, for a config of their choice); they still cannot open the user's data, and the user's own
passphrase still opens only the user's slots, which check the config.  Someone who kept a copy of
a format-1 slot from before its upgrade can put it back (deleting the upgraded one) and then change
the config unnoticed by that passphrase; rotating the passphrase after the upgrade closes this.
Python cannot reliably wipe secrets from memory.  Slot changes must run under the repository's
exclusive lock (two concurrent removals could otherwise remove the last two slots).

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
from typing import Any, Final

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
from coldkeep.repository.crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, KeyRing, Keys
from coldkeep.storage.base import Backend

log = logging.getLogger(__name__)

__all__ = [
    "KEYS_PREFIX",
    "PASSWORD_ENV",
    "KdfParams",
    "SlotInfo",
    "add_slot",
    "check_slots",
    "has_slots",
    "init_keys",
    "list_slots",
    "open_keys",
    "read_passphrase",
    "remove_slot",
]

SALT_SIZE: Final = 16

#: the slot format written now (2: checksum, bound to the config); format 1 is still read
SLOT_VERSION: Final = 2
KEYS_PREFIX: Final = "keys/"
SLOT_AAD_PREFIXES: Final = {1: b"coldkeep-keyslot-v1", 2: b"coldkeep-keyslot-v2"}
#: BLAKE3 digests: the config digest a slot is bound to, and its MAC
DIGEST_SIZE: Final = 32
PASSWORD_ENV: Final = "COLDKEEP_PASSWORD"

#: bounds on KDF parameters, checked when creating and when reading a slot
MIN_MEMORY_KIB: Final = 8
MAX_MEMORY_KIB: Final = 4 * 1024 * 1024  # 4 GiB
MAX_ITERATIONS: Final = 64
MAX_LANES: Final = 64

_SLOT_ID = re.compile(r"^[0-9a-f]{16}$")


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
    """What ``repo key list`` shows about a slot (nothing secret).

    ``version`` is the slot format (1: no checksum, config not authenticated); ``config`` the
    config digest a format-2 slot is bound to (``None`` for format 1)."""

    slot_id: str
    created: datetime
    hostname: str
    comment: str
    kdf: KdfParams
    version: int = SLOT_VERSION
    config: bytes | None = None


@dataclass(frozen=True)
class _Slot:
    info: SlotInfo
    salt: bytes
    nonce: bytes
    wrapped: bytes
    config_mac: bytes | None = None  # format 2: Keys.config_mac(info.config)


class _BadSlot(Exception):
    """A slot document that cannot be used (reason in args[0]; never secret)."""


class _DamagedSlot(_BadSlot):
    """A slot whose bytes are not what was written (checksum mismatch, truncated, not JSON)."""


class _NewerSlot(_BadSlot):
    def __init__(self, found: int) -> None:
        super().__init__(f"format version {found}")
        self.found = found


def _slot_key(slot_id: str) -> str:
    return KEYS_PREFIX + slot_id


def _slot_aad(slot_id: str, version: int, config: bytes | None) -> bytes:
    """What a slot's wrap authenticates besides the keys: its format, its id and (format 2) the
    digest of the config it was made for."""
    aad = SLOT_AAD_PREFIXES[version] + slot_id.encode("ascii")
    return aad + config if version >= 2 and config is not None else aad


def _checksum(doc: Mapping[str, Any]) -> str:
    """A slot document's checksum: BLAKE3 of its other fields as canonical JSON, hex."""
    canonical = json.dumps(
        {k: v for k, v in doc.items() if k != "checksum"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return blake3.blake3(canonical.encode("ascii")).hexdigest()


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


@dataclass(frozen=True)
class _NewSlot:
    """Who a slot being written is: a new one, or an upgraded format-1 slot keeping its identity."""

    slot_id: str
    created: str
    hostname: str
    comment: str


def _make_slot(keys: Keys, passphrase: str, who: _NewSlot, params: KdfParams, config: bytes) -> bytes:
    """The stored bytes of a format-2 slot wrapping ``keys`` for ``passphrase`` and ``config``.

    The result is parsed and unwrapped again before it is returned (with the key-encryption key
    already derived: no second Argon2id run), so a slot that would not open is never written."""
    params.check()
    if len(config) != DIGEST_SIZE:
        raise ValueError(f"a config digest has {DIGEST_SIZE} bytes")
    salt = os.urandom(SALT_SIZE)
    kek = _derive(passphrase, salt, params)
    nonce = os.urandom(NONCE_SIZE)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aad = _slot_aad(who.slot_id, SLOT_VERSION, config)
    wrapped = AESGCM(kek).encrypt(nonce, keys._material(), aad)
    doc = {
        "version": SLOT_VERSION,
        "id": who.slot_id,
        "created": who.created,
        "hostname": who.hostname,
        "comment": who.comment,
        "config": config.hex(),
        "config_mac": keys.config_mac(config).hex(),
        "kdf": {
            "name": "argon2id",
            "salt": _b64(salt),
            "memory_kib": params.memory_kib,
            "iterations": params.iterations,
            "lanes": params.lanes,
        },
        "wrap": {"cipher": "aes-256-gcm", "nonce": _b64(nonce), "ciphertext": _b64(wrapped)},
    }
    doc["checksum"] = _checksum(doc)
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    check = _parse_slot(who.slot_id, data)
    if AESGCM(kek).decrypt(check.nonce, check.wrapped, aad) != keys._material():  # pragma: no cover
        raise RuntimeError("a new key slot does not unwrap to its keys")
    return data


def _write_slot(backend: Backend, keys: Keys, passphrase: str, comment: str, params: KdfParams) -> str:
    config = keys.config_digest
    if config is None:
        raise ValueError("keys without a config digest cannot make a key slot")
    for _ in range(3):  # a 64-bit id collision is (practically) impossible; retry anyway
        who = _NewSlot(secrets.token_hex(8), clock.isoformat(clock.now()), socket.gethostname(), comment)
        if backend.put_if_absent(_slot_key(who.slot_id), _make_slot(keys, passphrase, who, params, config)):
            log.info("wrote key slot %s", who.slot_id)
            return who.slot_id
    raise RepositoryError(f"could not create a key slot in {backend.describe()} (slot id collisions)")


def _slot_document(data: bytes) -> dict[str, Any]:
    """The JSON document of a stored slot: format 2 with its checksum verified, or format 1 (no
    checksum).  :class:`_DamagedSlot` when the bytes are not what was written."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _DamagedSlot("damaged (not a JSON document)") from None
    if not isinstance(doc, dict):
        raise _DamagedSlot("damaged (not a JSON object)")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _BadSlot("version missing")
    checksum = doc.get("checksum")
    if (2 <= version <= SLOT_VERSION or checksum is not None) and checksum != _checksum(doc):
        raise _DamagedSlot("damaged (checksum mismatch)")  # later formats keep this checksum
    if version > SLOT_VERSION:
        raise _NewerSlot(version)
    if version not in SLOT_AAD_PREFIXES:
        raise _BadSlot(f"unknown format version {version}")
    return doc


def _parse_slot(slot_id: str, data: bytes) -> _Slot:
    doc = _slot_document(data)
    version: int = doc["version"]
    if doc.get("id") != slot_id:
        raise _BadSlot("id does not match the object name")
    config = config_mac = None
    if version >= 2:
        config, config_mac = _hex_digest(doc, "config"), _hex_digest(doc, "config_mac")
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
        info=SlotInfo(slot_id, created, hostname, comment, params, version, config),
        salt=salt,
        nonce=_unb64(wrap, "nonce", NONCE_SIZE),
        wrapped=_unb64(wrap, "ciphertext", 2 * KEY_SIZE + TAG_SIZE),
        config_mac=config_mac,
    )


def _hex_digest(doc: Mapping[str, Any], field: str) -> bytes:
    value = doc.get(field)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != DIGEST_SIZE:
        raise _BadSlot(f"{field} missing")
    return raw


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
    """Parsed slots, format 2 first, each in creation order, and the slots that could not be used
    (by id)."""
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
    good.sort(key=lambda s: (-s.info.version, s.info.created, s.info.slot_id))
    return good, bad


def _unwrap(slot: _Slot, passphrase: str) -> Keys | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    info = slot.info
    kek = _derive(passphrase, slot.salt, info.kdf)
    try:
        material = AESGCM(kek).decrypt(
            slot.nonce, slot.wrapped, _slot_aad(info.slot_id, info.version, info.config)
        )
    except InvalidTag:
        return None
    try:
        return Keys(material[:KEY_SIZE], material[KEY_SIZE:], slot_id=info.slot_id)
    except ValueError:  # authentic but unusable (equal keys): only a hand-made slot can do that
        log.warning("key slot %s unwraps to unusable keys", info.slot_id)
        return None


def _upgrade(backend: Backend, slot: _Slot, keys: Keys, passphrase: str, config: bytes) -> None:
    """Rewrite format-1 ``slot`` (just opened with ``passphrase``) as format 2 bound to ``config``,
    in place; best effort: a failure to write leaves the format-1 slot and logs a warning."""
    info = slot.info
    who = _NewSlot(info.slot_id, clock.isoformat(info.created), info.hostname, info.comment)
    key = _slot_key(info.slot_id)
    try:
        data = _make_slot(keys, passphrase, who, info.kdf, config)
        if backend.exists(key):  # removed meanwhile (`repo key remove`): do not bring it back
            backend.put(key, data)
            log.info(
                "upgraded key slot %s to format %d (authenticates the config)", info.slot_id, SLOT_VERSION
            )
    except ColdkeepError as exc:
        log.warning(
            "key slot %s stays format 1 (no checksum, config not authenticated): cannot rewrite it: %s",
            info.slot_id,
            exc.message,
        )


# ------------------------------------------------------------------------------------------------
# public operations


def init_keys(
    backend: Backend,
    passphrase: str,
    *,
    config_digest: bytes,
    comment: str = "",
    kdf_params: KdfParams | None = None,
) -> Keys:
    """Generate the repository's keys and write the first slot for ``passphrase``, bound to the
    config whose digest (footer) is ``config_digest``.

    Refuses (:class:`~coldkeep.errors.RepositoryExists`) when ``keys/`` already holds anything.
    """
    _encode_passphrase(passphrase)  # refuse an empty passphrase before doing anything
    if any(True for _ in backend.list(KEYS_PREFIX)):
        raise RepositoryExists(f"{backend.describe()} (it already has key slots)")
    keys = Keys.generate()
    keys.config_digest = bytes(config_digest)
    keys.slot_id = _write_slot(backend, keys, passphrase, comment, kdf_params or KdfParams())
    return keys


def open_keys(backend: Backend, passphrase: str, *, config_digest: bytes) -> Keys:
    """The keys of the first slot (format 2 first, then creation order) that ``passphrase``
    opens, after checking that the repository config (digest ``config_digest``) is the one that
    slot was made for.  A format-1 slot that opens is upgraded to format 2 (see the module doc).

    Costs one Argon2id run per slot tried.  Raises :class:`~coldkeep.errors.IntegrityError` when
    the config is not the slot's (it was changed), or when no intact slot opens and some slot is
    damaged (naming it); :class:`~coldkeep.errors.WrongPassword` when no slot opens;
    :class:`~coldkeep.errors.UnsupportedFormat` when none opens and some slot is of a newer format;
    :class:`~coldkeep.errors.RepositoryError` when there is no slot at all.
    """
    where = backend.describe()
    slots, bad = _read_slots(backend)
    for slot in slots:
        keys = _unwrap(slot, passphrase)
        if keys is None:
            continue
        log.debug("opened key slot %s", slot.info.slot_id)
        _check_config(where, slots, slot, keys, config_digest)
        keys.config_digest = bytes(config_digest)
        if slot.info.config is None:
            _upgrade(backend, slot, keys, passphrase, keys.config_digest)
        return keys
    newer = [exc.found for exc in bad.values() if isinstance(exc, _NewerSlot)]
    if newer:
        raise UnsupportedFormat(found=max(newer), supported=SLOT_VERSION)
    named = "; ".join(f"{KEYS_PREFIX}{k}: {v.args[0]}" for k, v in sorted(bad.items()))
    if not slots:
        if bad:
            raise IntegrityError(f"no usable key slot in {where}: {named}", hint=_SLOT_HINT)
        raise RepositoryError(f"no key slots in {where} ({KEYS_PREFIX} is empty)")
    tried = f"{len(slots)} key slot{'s' if len(slots) != 1 else ''} tried"
    if any(isinstance(exc, _DamagedSlot) for exc in bad.values()):
        raise IntegrityError(
            f"no intact key slot of {where} opens with this passphrase ({tried}), and a key slot is "
            f"damaged (the passphrase may be its): {named}",
            hint=_SLOT_HINT,
        )
    detail = f"{where} ({tried}"
    if bad:
        detail += f"; {len(bad)} unreadable slot(s) skipped: {', '.join(sorted(bad))}"
    raise WrongPassword(detail + ")")


def _check_config(where: str, slots: list[_Slot], opened: _Slot, keys: Keys, config_digest: bytes) -> None:
    """Raise :class:`IntegrityError` unless the config (``config_digest``) is the one the slot
    that opened was made for and the one every other slot written with these keys was made for
    (their :meth:`Keys.config_mac` proves it; slots it does not verify are someone else's and
    are not believed).  A format-1 slot says nothing: this is what protects its passphrase once
    any slot of the repository is format 2."""
    for slot in [opened, *(s for s in slots if s is not opened)]:
        expected, mac = slot.info.config, slot.config_mac
        if expected is None or mac is None:
            continue
        if slot is not opened and not secrets.compare_digest(keys.config_mac(expected), mac):
            continue
        if not secrets.compare_digest(expected, config_digest):
            raise IntegrityError(
                f"repository config of {where} was changed: it is not the config key slot "
                f"{slot.info.slot_id} was made for (digest {config_digest.hex()[:16]}, expected "
                f"{expected.hex()[:16]}); refusing to open",
                hint="someone with write access to the repository changed `config`: put back the "
                "original from a copy of the repository before writing anything",
            )


_SLOT_HINT = (
    "put back the damaged key slot from a copy of the repository (`repo copy` copies keys/), "
    "or open with another passphrase; `coldkeep repo check` lists damaged slots"
)


def add_slot(
    backend: Backend,
    keys: Keys,
    new_passphrase: str,
    comment: str = "",
    *,
    kdf_params: KdfParams | None = None,
) -> str:
    """Add a passphrase: a new slot wrapping ``keys``, bound to the config ``keys`` were opened
    with (:attr:`Keys.config_digest`).  Returns the new slot id."""
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
    """Every usable slot, format 2 first, each in creation order (unusable ones are logged and
    left out)."""
    slots, _ = _read_slots(backend)
    return [s.info for s in slots]


def has_slots(backend: Backend) -> bool:
    """Whether ``keys/`` holds a key slot, usable or not (an unencrypted repository has none)."""
    return bool(_slot_ids(backend))


def check_slots(
    backend: Backend, config_digest: bytes | None, keys: KeyRing | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """``repo check``'s view of the key slots: ``(problems as (key, detail), warnings)``.

    Problems: a damaged or unusable slot; a format-2 slot made for another config than the one
    whose digest is ``config_digest`` (the repository's, as opened); with the repository's
    ``keys``, a format-2 slot not written with them (planted).  Warnings: a slot of a newer
    format, a format-1 slot (no checksum, config not authenticated)."""
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    slots, bad = _read_slots(backend)
    for slot_id, why in sorted(bad.items()):
        if isinstance(why, _NewerSlot):
            warnings.append(f"key slot {KEYS_PREFIX}{slot_id} has a newer {why.args[0]}")
        elif isinstance(why, _DamagedSlot):
            problems.append((_slot_key(slot_id), why.args[0]))
        else:
            problems.append((_slot_key(slot_id), f"unusable ({why.args[0]})"))
    for slot in slots:
        info = slot.info
        if info.config is None:
            warnings.append(
                f"key slot {_slot_key(info.slot_id)} is format 1 (no checksum, does not authenticate "
                "the config): opening the repository with its passphrase upgrades it"
            )
        elif (
            isinstance(keys, Keys)
            and slot.config_mac is not None
            and not secrets.compare_digest(keys.config_mac(info.config), slot.config_mac)
        ):
            problems.append((_slot_key(info.slot_id), "not written with this repository's keys (planted?)"))
        elif config_digest is not None and info.config != config_digest:
            problems.append(
                (
                    _slot_key(info.slot_id),
                    "made for another repository config (the config or this slot was replaced)",
                )
            )
    return problems, warnings


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
