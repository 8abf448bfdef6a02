"""``ro-crate-metadata.json``: the package described as an RO-Crate 1.1 (pure: no I/O).

The root data entity (``./``) has every file of the package as a ``File`` part with its size,
media type and SHA-256 (``sha256``, schema.org's term, declared in the crate's own context entry
because the 1.1 context predates it); a ``CreateAction`` says how the package was made: the
instrument (coldkeep and its version), its objects (the dataset version with its content hash,
the code at its commit, the models with their snapshot ids where they have one and checkpoint
names) and its result
(the package).  Research repositories index crates by exactly these entities.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping, Sequence
from typing import Any

CONTEXT: list[Any] = ["https://w3id.org/ro/crate/1.1/context", {"sha256": "http://schema.org/sha256"}]
METADATA = "ro-crate-metadata.json"
_TYPES = {".md": "text/markdown", ".txt": "text/plain", ".json": "application/json", ".patch": "text/x-diff",
          ".sha256": "text/plain", ".log": "text/plain", ".gz": "application/gzip", ".zst": "application/zstd"}  # fmt: skip


def media_type(path: str) -> str:
    for suffix, kind in _TYPES.items():
        if path.endswith(suffix):
            return kind
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def build_crate(
    *,
    name: str,
    created: str,
    files: Mapping[str, tuple[str, int]],
    tool_version: str,
    dataset: Mapping[str, Any],
    code: Mapping[str, Any],
    models: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The crate of a package holding ``files`` (``path -> (sha256, size)``, every file but the
    metadata file itself).  ``dataset``: ``file``, ``version``, ``content_sha256``,
    ``snapshot_id``; ``code``: ``file``, ``commit``, ``branch``, ``remotes``; each model:
    ``file``, ``name``, ``source``, ``snapshot_id`` (or ``None``), and for a checkpoint its
    ``checkpoint`` name."""
    parts = sorted(files)
    graph: list[dict[str, Any]] = [
        {
            "@id": METADATA,
            "@type": "CreativeWork",
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
            "about": {"@id": "./"},
        },
        {
            "@id": "./",
            "@type": "Dataset",
            "name": name,
            "description": f"Reproducibility package {name}: dataset {dataset['version']}, "
            f"{len(models)} model(s), code at {code['commit'][:12]}, hardware and software records",
            "datePublished": created,
            "hasPart": [{"@id": p} for p in parts],
            "mentions": {"@id": "#create"},
        },
    ]
    for path in parts:
        sha, size = files[path]
        graph.append({"@id": path, "@type": "File", "name": path.rsplit("/", 1)[-1], "contentSize": str(size),
                      "encodingFormat": media_type(path), "sha256": sha})  # fmt: skip
    by_id = {e["@id"]: e for e in graph}
    by_id[dataset["file"]].update(
        description=f"dataset version {dataset['version']} (content hash {dataset['content_sha256']})",
        version=dataset["version"],
        identifier=[f"sha256:{dataset['content_sha256']}", f"coldkeep-snapshot:{dataset['snapshot_id']}"],
    )
    by_id[code["file"]].update(
        description=f"git archive of commit {code['commit']}"
        + (f" (branch {code['branch']})" if code.get("branch") else ""),
        version=code["commit"],
        identifier=[f"git:{code['commit']}", *(f"git-remote:{r}" for r in code.get("remotes", []))],
    )
    for model in models:
        ids = [f"coldkeep-snapshot:{model['snapshot_id']}"] if model.get("snapshot_id") else []
        if model.get("checkpoint"):
            by_id[model["file"]].update(
                description=f"checkpoint {model['checkpoint']} (stored copy: coldkeep snapshot {model['snapshot_id']})",
                alternateName=model["checkpoint"],
                identifier=[*ids, f"coldkeep-checkpoint:{model['checkpoint']}"],
            )
            continue
        by_id[model["file"]].update(description=f"model {model['name']} (from {model['source']})",
                                    identifier=ids or [f"path:{model['source']}"])  # fmt: skip
    graph.append({"@id": "#coldkeep", "@type": "SoftwareApplication", "name": "coldkeep", "version": tool_version,
                  "url": "https://pypi.org/project/coldkeep/"})  # fmt: skip
    graph.append({
        "@id": "#create",
        "@type": "CreateAction",
        "name": f"coldkeep repro create --name {name}",
        "endTime": created,
        "instrument": {"@id": "#coldkeep"},
        "object": [{"@id": dataset["file"]}, {"@id": code["file"]}, *({"@id": m["file"]} for m in models)],
        "result": {"@id": "./"},
    })  # fmt: skip
    return {"@context": CONTEXT, "@graph": graph}
