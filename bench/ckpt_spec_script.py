#!/usr/bin/env python3
"""
Archive model checkpoints to cold storage.

The spec's ``archive_checkpoints.py`` (I12, "Checkpoint Archival") exactly as written, except that
the two directory constants come from the environment (``CHECKPOINT_DIR``, ``ARCHIVE_DIR``) so the
benchmark can point it at its own data (bench/bench_checkpoints.sh).
"""

import os
import shutil
from datetime import datetime, timedelta  # noqa: F401 (as in the spec)
from pathlib import Path

CHECKPOINT_DIR = Path(os.environ.get("CHECKPOINT_DIR", "/mnt/nvme/models"))
ARCHIVE_DIR = Path(os.environ.get("ARCHIVE_DIR", "/mnt/hdd/model_archives"))
RETENTION_POLICY = {
    "checkpoint": 7,  # Keep regular checkpoints for 7 days
    "best": 90,  # Keep best checkpoints for 90 days
    "production": None,  # Keep all production checkpoints forever
    "rollback": 30,  # Keep rollback checkpoints for 30 days
}


def archive_checkpoints():
    """
    Archive old checkpoints based on retention policy.
    """
    for phase_dir in CHECKPOINT_DIR.glob("cet-d-*"):
        for checkpoint in phase_dir.glob("*-*"):
            # Parse checkpoint type and timestamp
            checkpoint_type = checkpoint.name.split("-")[0]
            timestamp_str = checkpoint.name.split("-", 1)[1]
            timestamp = datetime.strptime(timestamp_str, "%Y%m%d_%H%M%S")

            # Check retention
            retention_days = RETENTION_POLICY.get(checkpoint_type)

            if retention_days is None:
                # Keep forever (production checkpoints)
                continue

            age_days = (datetime.now() - timestamp).days

            if age_days > retention_days:
                # Archive to HDD
                archive_path = ARCHIVE_DIR / phase_dir.name / checkpoint.name
                archive_path.parent.mkdir(parents=True, exist_ok=True)

                print(f"Archiving {checkpoint} → {archive_path}")
                shutil.move(str(checkpoint), str(archive_path))

                # Compress
                shutil.make_archive(str(archive_path), "gztar", str(archive_path))
                shutil.rmtree(archive_path)  # Remove uncompressed


if __name__ == "__main__":
    archive_checkpoints()
