"""The repository config (``config``): format version, id, encryption, chunker parameters and
compression level.  Plaintext JSON with a footer, written once by ``repo init``; in an encrypted
repository every key slot authenticates it (see ``keyslots.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from coldkeep.errors import IntegrityError, ObjectNotFound, RepositoryNotInitialised, UnsupportedFormat
from coldkeep.repository import keyslots
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.format import CONFIG_KEY, DIGEST_SIZE, FORMAT_VERSION, add_footer, strip_footer
from coldkeep.storage.base import Backend


@dataclass(frozen=True)
class RepoConfig:
    """The repository config.  ``digest`` is the stored document's footer (BLAKE3 of the JSON as
    stored): what the key slots of an encrypted repository authenticate (see ``keyslots.py``)."""

    id: str
    version: int
    encrypted: bool
    chunker: ChunkerParams
    compression_level: int
    created: str
    digest: bytes = field(default=b"", compare=False, repr=False)

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": "coldkeep-repository",
            "version": self.version,
            "id": self.id,
            "encrypted": self.encrypted,
            "chunker": self.chunker.to_dict(),
            "compression_level": self.compression_level,
            "created": self.created,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str, digest: bytes = b"") -> RepoConfig:
        if not isinstance(doc, dict) or doc.get("format") != "coldkeep-repository":
            raise IntegrityError(f"{where}: config is not a coldkeep repository config")
        version = int(doc.get("version", 0))
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(found=version, supported=FORMAT_VERSION)
        try:
            return cls(
                id=str(doc["id"]),
                version=version,
                encrypted=bool(doc["encrypted"]),
                chunker=ChunkerParams.from_dict(doc["chunker"]),
                compression_level=int(doc.get("compression_level", 3)),
                created=str(doc.get("created", "")),
                digest=digest,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"repository config of {where}: malformed ({exc!r})") from None

    def encode(self) -> bytes:
        """The stored config object (JSON + footer); its footer is :attr:`digest` once read."""
        return add_footer(json.dumps(self.to_doc(), indent=2, sort_keys=True).encode())


def read_config(backend: Backend) -> RepoConfig:
    """The config, its footer checked (no key needed; opening the keys authenticates it)."""
    try:
        data = backend.get(CONFIG_KEY)
    except ObjectNotFound:
        raise RepositoryNotInitialised(backend.describe()) from None
    raw = strip_footer(data, "repository config")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"repository config: not JSON ({exc})") from None
    return RepoConfig.from_doc(doc, backend.describe(), data[-DIGEST_SIZE:])


def refuse_downgrade(backend: Backend, passphrase_given: bool) -> None:
    """Refuse a config that says "unencrypted" where encryption is evident: the repository has
    key slots, or a passphrase is configured (how a config rewritten to store later backups in
    plaintext would look)."""
    if keyslots.has_slots(backend):
        why = "but the repository has key slots (keys/)"
    elif passphrase_given:
        why = "but a passphrase is configured"
    else:
        return
    raise IntegrityError(
        f"repository config of {backend.describe()} says the repository is not encrypted, {why}: "
        "refusing to open it (later backups would be stored in plaintext)",
        hint="if the config was changed, put back the original from a copy of the repository; if the "
        "repository really is unencrypted, unset COLDKEEP_PASSWORD and [repository].password_file",
    )
