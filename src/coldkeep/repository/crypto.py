"""Repository keys: authenticated encryption and keyed chunk ids.

Keys
----
An encrypted repository has exactly two secrets, both 32 random bytes from ``os.urandom`` made once
by ``keyslots.init_keys`` and never changed afterwards (so no data ever needs rewriting):

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

The key slots that hold these keys under passphrases (their format, opening, adding, removing,
checking) are :mod:`coldkeep.repository.keyslots`; its names are still importable from here.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Final, Protocol

import blake3

from coldkeep.errors import IntegrityError

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
#: bytes ``seal`` adds to a plaintext (nonce + tag)
OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
#: BLAKE3 key-derivation context of the key behind :meth:`Keys.config_mac`
CONFIG_MAC_CONTEXT: Final = "coldkeep 2026-07 repository config authentication v1"


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
    directly with :meth:`generate` or the constructor); ``config_digest`` the digest of the
    repository config they were checked against (what new slots are bound to).  ``repr`` never
    shows key material, and pickling is refused so keys do not leak into a pickle by accident.
    """

    __slots__ = ("_aead", "_data_key", "_id_key", "config_digest", "slot_id")

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
        self.config_digest: bytes | None = None

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

    def config_mac(self, config_digest: bytes) -> bytes:
        """A MAC of a repository config's digest under a key derived from both keys: proves that
        whoever wrote it held the keys (see "Key slots" in ``keyslots.py``)."""
        mac_key = blake3.blake3(self._material(), derive_key_context=CONFIG_MAC_CONTEXT).digest()
        return bytes(blake3.blake3(config_digest, key=mac_key).digest())

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


def __getattr__(name: str) -> Any:
    """The key-slot names that lived here before ``keyslots.py`` (``crypto.open_keys``,
    ``from coldkeep.repository.crypto import KdfParams``, …), loaded on first use."""
    from coldkeep.repository import keyslots

    try:
        return getattr(keyslots, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
