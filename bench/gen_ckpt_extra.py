"""Extra checkpoint data for ``bench/bench_checkpoints.sh`` (deterministic).

.venv/bin/python bench/gen_ckpt_extra.py forty DIR     # 40 shards, 2,000 tensors, index, ~250 MiB
.venv/bin/python bench/gen_ckpt_extra.py many ROOT N   # N small checkpoints over 10 phases (for `list`)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def forty(out: Path, shards: int = 40, per_shard: int = 50) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(40)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {
            f"layers.{s}.t{i:02d}": rng.standard_normal((256, 256)).astype(np.float16)
            for i in range(per_shard)
        }
        save_file(part, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({"model_type": "bench", "shards": shards}))


def many(root: Path, n: int) -> None:
    rng = np.random.default_rng(1000)
    for i in range(n):
        phase = root / f"cet-d-phase{i % 10}"
        day, sec = divmod(i, 86400)
        ckpt = (
            phase
            / f"checkpoint-2025{1 + day // 28:02d}{1 + day % 28:02d}_{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}"
        )
        ckpt.mkdir(parents=True, exist_ok=True)
        save_file({f"t{j}": rng.standard_normal((16, 16)).astype(np.float16) for j in range(10)},
                  str(ckpt / "model.safetensors"))  # fmt: skip
        (ckpt / "config.json").write_text('{"model_type": "bench"}')


if __name__ == "__main__":
    if sys.argv[1] == "forty":
        forty(Path(sys.argv[2]))
    elif sys.argv[1] == "many":
        many(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
