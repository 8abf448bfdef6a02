"""Model checkpoints: recognised by name, protected once complete, archived by type with the
stored copy verified first, recovered by name, promoted and rolled back with a history.

The service behind ``coldkeep checkpoints …`` (see docs/design.md, "Model checkpoints"):

* :mod:`.naming` — the naming convention, one pure parser (golden-tested);
* :mod:`.tensors`, :mod:`.completeness` — is a checkpoint complete (safe to store and remove)?
* :mod:`.policy` — the hot retention, a pure function with reasons;
* :mod:`.inventory` — hot checkpoints, stored ones, the rows of ``list``;
* :mod:`.store` — ``backup`` and ``archive``;
* :mod:`.recover` — ``recover``, ``verify`` and the load check;
* :mod:`.promote` — ``promote``, ``rollback`` and ``history``;
* :mod:`.export` — ``export`` to a standalone tar archive.

Stored checkpoints are snapshots of kind ``checkpoint``: Tier 1, never removed by any retention
(:mod:`coldkeep.ownership`).
"""

from __future__ import annotations

from coldkeep.checkpoints.service import Service

__all__ = ["Service"]
