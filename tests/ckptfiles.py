"""Real checkpoint directories for the checkpoint tests: safetensors shards written with the
``safetensors`` library (numpy), an index, config and tokenizer files, optimizer state; and a
:class:`~tests.helpers.Site` with a ``[checkpoints]`` section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.helpers import Site, toml_str


def tensors(seed: int, count: int, shape: tuple[int, ...] = (32, 32)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": rng.standard_normal(shape).astype(np.float16) for i in range(count)}


def write_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    shards: int = 2,
    per_shard: int = 6,
    shape: tuple[int, ...] = (32, 32),
    index: bool = True,
) -> Path:
    """A Hugging Face–style checkpoint: ``model-0000i-of-0000n.safetensors`` shards, their
    ``model.safetensors.index.json`` (unless ``index=False``), ``config.json``,
    ``tokenizer.json`` and an ``optimizer.bin``."""
    path.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"s{s}.{k}": v for k, v in tensors(seed * 100 + s, per_shard, shape).items()}
        save_file(part, str(path / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    if index:
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}), encoding="utf-8"
        )
    (path / "config.json").write_text(json.dumps({"model_type": "toy", "seed": seed}), encoding="utf-8")
    (path / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}), encoding="utf-8")
    rng = np.random.default_rng(seed + 7)
    (path / "optimizer.bin").write_bytes(rng.bytes(40_000))
    return path


def checkpoint_site(root: Path, *, settle_seconds: int = 0, extra: str = "") -> Site:
    """A site whose ``[checkpoints].root`` is ``root/models``; initialised."""
    site = Site(root)
    models = root / "models"
    models.mkdir(exist_ok=True)
    with site.config.open("a", encoding="utf-8") as f:
        f.write(f"[checkpoints]\nroot = {toml_str(str(models))}\nsettle_seconds = {settle_seconds}\n{extra}")
    site.ok("repo", "init")
    return site


def models(site: Site) -> Path:
    return site.root / "models"
