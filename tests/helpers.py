"""Helpers shared by tests that drive the real ``coldkeep`` command in a subprocess.

* :class:`Site` — one repository (plus optional copies) under a directory: writes the config,
  runs ``coldkeep --config …`` with a private ``COLDKEEP_CACHE_DIR``, parses ``--json`` output;
* :func:`make_tree`, :func:`modify_tree`, :func:`tree_digest` — deterministic sample trees and a
  bit-exact fingerprint of a directory (contents, symlink targets, directories);
* :func:`one_line_error` — the error contract: exactly one ``error:`` and one ``hint:`` line on
  stderr and never a traceback;
* :func:`flip_byte` — damage a file on disk in place;
* :func:`need` — skip a test whose requirement this machine lacks, but fail it under CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

COLDKEEP = str(Path(sys.executable).parent / "coldkeep")
ME = pwd.getpwuid(os.getuid()).pw_name
MiB = 1024 * 1024

#: AWS settings for subprocesses that talk to the test S3 server (or to a stopped endpoint)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: the environment variables a test must never inherit from the developer's shell
_SCRUB = (
    "COLDKEEP_CONFIG",
    "COLDKEEP_PASSWORD",
    "COLDKEEP_FAULTS",
    "COLDKEEP_FAULTS_COUNTS",
    "COLDKEEP_CACHE_DIR",
)


#: set to ``1`` by ``.ci/run``: there a missing test requirement is a failure, not a skip
CI_ENV = "COLDKEEP_CI"


def under_ci() -> bool:
    return os.environ.get(CI_ENV, "") == "1"


def need(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds; else skip the test with ``reason`` — or, under CI
    (``COLDKEEP_CI=1``), fail it: CI must run every test, a skipped one proves nothing."""
    if not condition:
        missing(reason)


def missing(reason: str) -> NoReturn:
    """Skip (fail under CI) because ``reason``: a requirement of the test is missing here."""
    if under_ci():
        pytest.fail(f"requirement missing under CI ({CI_ENV}=1): {reason}", pytrace=False)
    pytest.skip(reason)


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(
    path: Path,
    url: str,
    *,
    endpoint_url: str = "",
    password_file: str = "",
    copies: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """A minimal coldkeep.toml with only ``[repository]`` (and ``[repository.copies.NAME]``)."""
    lines = ["[repository]", f"url = {toml_str(url)}", f"owner = {toml_str(ME)}"]
    if endpoint_url:
        lines.append(f"endpoint_url = {toml_str(endpoint_url)}")
    if password_file:
        lines.append(f"password_file = {toml_str(password_file)}")
    for name, section in (copies or {}).items():
        lines.append(f"[repository.copies.{name}]")
        lines.extend(f"{key} = {toml_str(value)}" for key, value in section.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(extra or {})
    return env


def run_coldkeep(
    config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COLDKEEP, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=base_env(env),
        timeout=timeout,
        check=False,
    )


@dataclass
class Site:
    """A repository at ``root/repo`` (file://) or a given URL, with its own cache directory.

    ``copies`` maps a copy name to its URL (``[repository.copies.NAME]``).
    """

    root: Path
    url: str = ""
    endpoint_url: str = ""
    password_file: str = ""
    copies: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.url:
            self.url = f"file://{self.root / 'repo'}"
        self.write()

    @property
    def repo_dir(self) -> Path:
        """The repository's directory (``root/repo`` unless the URL names another one)."""
        if self.url.startswith("file://"):
            return Path(self.url.removeprefix("file://"))
        return self.root / "repo"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def config(self) -> Path:
        return self.root / "coldkeep.toml"

    def write(self) -> None:
        write_config(
            self.config,
            self.url,
            endpoint_url=self.endpoint_url,
            password_file=self.password_file,
            copies=self.copies,
        )

    def full_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"COLDKEEP_CACHE_DIR": str(self.cache_dir), **self.env, **(extra or {})}

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_coldkeep(self.config, *args, env=self.full_env(env), timeout=timeout)

    def ok(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit 0."""
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, f"coldkeep {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def json(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        return json.loads(self.ok("--json", *args, env=env).stdout)

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [COLDKEEP, "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=base_env(self.full_env(env)),
        )

    def snapshot_ids(self) -> list[str]:
        """Full ids, oldest first."""
        return [s["id"] for s in self.json("snapshots")]

    def restore_digest(self, snapshot: str, target: Path, source: Path) -> dict[str, str]:
        """Restore into a fresh ``target`` (must not exist) and fingerprint what was backed up
        from ``source`` (snapshots keep absolute paths, so it lands at ``target/<source>``)."""
        assert not target.exists(), target
        self.ok("restore", snapshot, "--target", str(target))
        try:
            return tree_digest(target / str(source).lstrip("/"))
        finally:
            shutil.rmtree(target)

    def snapshot_files(self) -> set[str]:
        """Ids of the snapshot documents in a local repository (no process needed)."""
        return {p.name for p in (self.repo_dir / "snapshots").glob("*") if not p.name.startswith(".tmp-")}

    def clone(self, root: Path, *, copy_urls: Mapping[str, str] | None = None) -> Site:
        """A copy of this site (repository files and cache) under ``root``; ``file://`` only.

        ``copy_urls`` maps copy names to new URLs (the caller copies those directories).
        """
        assert self.url.startswith("file://"), self.url
        root.mkdir(parents=True)
        if self.repo_dir.exists():
            shutil.copytree(self.repo_dir, root / "repo", symlinks=True)
        if self.cache_dir.exists():
            shutil.copytree(self.cache_dir, root / "cache", symlinks=True)
        copies = {name: dict(section) for name, section in self.copies.items()}
        for name, url in (copy_urls or {}).items():
            copies[name]["url"] = url
        return Site(root, password_file=self.password_file, copies=copies, env=dict(self.env))


# ------------------------------------------------------------------------------------------------
# sample trees


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.getrandbits(size * 8).to_bytes(size, "little") if size else b""


def _text(rng: random.Random, size: int) -> bytes:
    words = [b"checkpoint", b"tensor", b"epoch", b"loss", b"dataset", b"shard", b"wal", b"lsn"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" " + str(rng.randrange(10**6)).encode() + b"\n"
    return bytes(out[:size])


def make_tree(root: Path, *, seed: int = 0, small_files: int = 28, big_sizes: tuple[int, ...] = ()) -> Path:
    """A deterministic tree: ``small_files`` files (random or text, 0–64 KiB, one empty) spread
    over nested directories, big random files of ``big_sizes`` bytes, a symlink and an empty
    directory.  Defaults to two files > 4 MiB (the backup's large-file path), ~9 MiB in all.
    """
    if not big_sizes:
        big_sizes = (int(4.2 * MiB), int(4.1 * MiB))
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root, root / "a", root / "a" / "deep" / "er", root / "b"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    (root / "empty-dir").mkdir(exist_ok=True)
    for i in range(small_files):
        size = 0 if i == 0 else rng.randrange(1, 64 * 1024)
        data = _text(rng, size) if i % 3 == 0 else _random_bytes(rng, size)
        (rng.choice(dirs) / f"file-{i:02d}.bin").write_bytes(data)
    for i, size in enumerate(big_sizes):
        (root / "b" / f"big-{i}.bin").write_bytes(_random_bytes(rng, size))
    link = root / "a" / "link-to-big"
    if not link.is_symlink():
        link.symlink_to("../b/big-0.bin")
    return root


def modify_tree(root: Path, *, seed: int) -> None:
    """Change the tree the way work does: rewrite part of each big file, change eight small files,
    add a new file (random data, 2.5 MiB) and delete one."""
    rng = random.Random(seed + 1000)
    for big in sorted((root / "b").glob("big-*.bin")):
        data = bytearray(big.read_bytes())
        start = rng.randrange(0, max(1, len(data) - MiB))
        data[start : start + MiB // 2] = _random_bytes(rng, MiB // 2)
        big.write_bytes(bytes(data))
    small = sorted(p for p in root.rglob("file-*.bin") if p.is_file())
    for path in rng.sample(small, min(8, len(small))):
        path.write_bytes(_random_bytes(rng, rng.randrange(1, 48 * 1024)))
    (root / "a" / f"new-{seed}.bin").write_bytes(_random_bytes(rng, int(2.5 * MiB)))
    victims = [p for p in small if p.exists()]
    if victims:
        rng.choice(victims).unlink()


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path -> fingerprint`` for every entry below ``root``: SHA-256 and mode of
    files, the target of symlinks, ``dir`` for directories."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = (
                    f"file:{oct(path.stat().st_mode & 0o777)}:"
                    + hashlib.sha256(path.read_bytes()).hexdigest()
                )
    return out


# ------------------------------------------------------------------------------------------------
# errors and damage


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error contract: one ``error:`` line, one ``hint:`` line, no traceback; other stderr
    lines may only be ``warning:`` lines.  Returns the error line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert len(hints) == 1, proc.stderr
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in lines), proc.stderr
    return errors[0]


def flip_byte(path: Path, offset: int | None = None) -> int:
    """XOR one byte of ``path`` with 0xFF (the middle one by default); returns its offset."""
    data = bytearray(path.read_bytes())
    assert data, path
    at = len(data) // 2 if offset is None else offset % len(data)
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return at


def repo_files(repo_dir: Path) -> dict[str, Path]:
    """``key -> path`` of every object in a local repository (temp files left out)."""
    return {
        p.relative_to(repo_dir).as_posix(): p
        for p in sorted(repo_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".tmp-")
    }


def read_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    return counts


def spread(count: int, points: int) -> list[int]:
    """``points`` distinct call numbers spread evenly over ``1..count`` (all of them if fewer)."""
    if count <= points:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (points - 1)) for i in range(points)})


# ------------------------------------------------------------------------------------------------
# repositories as older coldkeep versions wrote them


def legacy_key_slot(keys: Any, passphrase: str, slot_id: str, *, memory_kib: int = 8192) -> bytes:
    """A format-1 key slot, byte for byte as coldkeep wrote slots before they authenticated the
    config and had a checksum: plain JSON, the keys wrapped with associated data
    ``b"coldkeep-keyslot-v1" + slot id``.  ``keys`` is a :class:`coldkeep.repository.crypto.Keys`."""
    import base64

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from coldkeep.repository import crypto

    params = crypto.KdfParams(memory_kib=memory_kib, iterations=1, lanes=1)
    salt, nonce = os.urandom(16), os.urandom(12)
    kek = crypto._derive(passphrase, salt, params)
    wrapped = AESGCM(kek).encrypt(nonce, keys._material(), b"coldkeep-keyslot-v1" + slot_id.encode())
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    doc = {
        "version": 1,
        "id": slot_id,
        "created": "2025-01-01T00:00:00Z",
        "hostname": "old-host",
        "comment": "written by an older coldkeep",
        "kdf": {"name": "argon2id", "salt": b64(salt), "memory_kib": memory_kib, "iterations": 1, "lanes": 1},
        "wrap": {"cipher": "aes-256-gcm", "nonce": b64(nonce), "ciphertext": b64(wrapped)},
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def make_legacy_repository(repo_dir: Path, passphrases: list[str]) -> list[str]:
    """Turn the encrypted local repository at ``repo_dir`` (opened with ``passphrases[0]``) into
    one as an older coldkeep left it: its slots replaced by format-1 slots, one per passphrase
    (the config's format did not change).  Returns the new slot ids, in order."""
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    with Repository.open(LocalBackend(repo_dir), passphrases[0]) as repo:
        keys = repo.keys
    for path in (repo_dir / "keys").iterdir():
        path.unlink()
    ids = []
    for i, passphrase in enumerate(passphrases):
        slot_id = f"{i:02d}" + "0123456789abcd"
        (repo_dir / "keys" / slot_id).write_bytes(legacy_key_slot(keys, passphrase, slot_id))
        ids.append(slot_id)
    return ids


# inspecting local repositories through the Python API


def blob_locations(repo_dir: Path, passphrase: str | None = None) -> dict[bytes, list[Any]]:
    """Blob id -> every :class:`BlobEntry` the index documents of a local repository list for it."""
    from coldkeep.repository.index import decode_index
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    backend = LocalBackend(repo_dir)
    repo = Repository.open(backend, passphrase)
    out: dict[bytes, list[Any]] = {}
    for info in backend.list("index/"):
        for _pack, _size, entries in decode_index(
            repo.keys, backend.get(info.key), info.key.removeprefix("index/")
        ):
            for entry in entries:
                out.setdefault(entry.id, []).append(entry)
    return out


def snapshot_blobs(repo_dir: Path, snapshot: str, cache: Path, passphrase: str | None = None) -> set[bytes]:
    """Every blob (tree blobs and chunks) a snapshot of a local repository uses."""
    from coldkeep.repository.index import IndexCache
    from coldkeep.repository.repository import Repository
    from coldkeep.storage.local import LocalBackend

    with Repository.open(LocalBackend(repo_dir), passphrase) as repo:
        repo._cache = IndexCache(repo.config.id, path=cache)
        repo.refresh_cache(full=True)
        snap = repo.load_snapshot_id(snapshot)
        used = {bytes.fromhex(t) for t in snap.tree}
        for entry in repo.iter_tree(snap):
            used.update(bytes.fromhex(c) for c in entry.get("chunks", ()))
    return used


def forget_file(site: Site, snapshot: str) -> None:
    """Remove a snapshot document of a local repository (what `forget` does)."""
    (site.repo_dir / "snapshots" / snapshot).unlink()


def blob_kept_elsewhere_by_the_copy(
    site: Site, copy: Site, old: str, new: str, cache: Path, passphrase: str | None = None
) -> Any:
    """A data blob of snapshot ``new`` in a pack of ``site`` that also holds blobs only ``old``
    uses (so a prune repacks it) and that ``copy`` keeps in another pack (after the copy was
    pruned on its own); its :class:`BlobEntry` in ``site``."""
    here, there = blob_locations(site.repo_dir, passphrase), blob_locations(copy.repo_dir, passphrase)
    used_new = snapshot_blobs(site.repo_dir, new, cache, passphrase)
    used_old = snapshot_blobs(site.repo_dir, old, cache, passphrase)
    garbage_packs = {e.pack for bid in used_old - used_new for e in here.get(bid, [])}
    return next(
        e
        for bid in sorted(used_new)
        for e in here[bid]
        if e.kind == "data"
        and e.pack in garbage_packs
        and all(t.pack != e.pack for t in there.get(bid, []))
        and bid in there
    )
