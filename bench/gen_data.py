"""Deterministic synthetic data for the repository benchmark (``bench/bench_repository.sh``).

    .venv/bin/python bench/gen_data.py checkpoints DIR [--n 3] [--shards 10] [--seed 11]
    .venv/bin/python bench/gen_data.py dataset DIR [--apps 50] [--holdout 10] [--files 10000] [--mb 500]
    .venv/bin/python bench/gen_data.py mutate DIR [--fraction 0.02] [--add 10] [--seed 23]

``checkpoints`` writes ``DIR/ckpt-1 … ckpt-N`` (~1 GiB each): ``--shards`` float16 safetensors files
(written with the ``safetensors`` library, so the layout is the real one: tensors sorted by name)
holding one Llama-style layer each (hidden 2048, intermediate 5632: q/k/v/o 8 MiB, gate/up/down
22 MiB, two 4 KiB norms; 98 MiB per shard), plus config.json, generation_config.json,
tokenizer.json (identical in every checkpoint) and trainer_state.json (different in each).
Between consecutive checkpoints about 30 % of the tensor bytes are identical:

* ``frozen`` shards (the first ``--frozen``, default 2): every tensor identical;
* ``mixed`` shards (the next ``--mixed``, default 3): attention q/k/v/o and input_layernorm
  identical, the MLP and post_attention_layernorm changed. In file order (sorted by name) the
  changed MLP tensors sit between the frozen input_layernorm and the frozen attention tensors;
* the other shards: every tensor changed.

A changed tensor is the previous one + N(0, 0.002) noise, so nearly every fp16 value differs, as
in real fine-tuning. ``DIR/changes.json`` lists, for every checkpoint after the first, each changed
tensor and its bytes, with totals overall and for the mixed shards (the "within 10 %" target).

``dataset`` writes ``DIR/train/app-000…`` and ``DIR/holdout/app-0xx…`` (``--apps`` apps, the last
``--holdout`` of them holdout) with ``--files`` files in all (each app: metadata.json + source,
tests, docs and data files: .py .js .ts .md .txt .json .jsonl .yaml .csv), log-normal sizes
(median ~25 kB, capped at 1.5 MB) scaled to ``--mb`` MB. Text is drawn per file from a Zipf
vocabulary, so every file is distinct and compresses roughly 2.5-3x, like source code and prose.

``mutate`` rewrites a 0.5-4 kB slice of ``--fraction`` of the files and appends a line to each
(their size and mtime change), and adds ``--add`` new files; it prints what it did as JSON.

Everything is a pure function of the arguments and the seed: rerunning gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1024 * 1024

# --------------------------------------------------------------------------------------------
# (a) checkpoints

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def layer_shapes(layer: int, hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{layer}."
    shapes: dict[str, tuple[int, ...]] = {
        p + "input_layernorm.weight": (hidden,),
        p + "post_attention_layernorm.weight": (hidden,),
    }
    for name in ATTN:
        shapes[p + f"self_attn.{name}.weight"] = (hidden, hidden)
    shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
    shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
    shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    return shapes


def frozen_in_mixed(name: str) -> bool:
    """In a mixed shard: attention and the input norm are frozen, MLP and the post-attention norm train."""
    return ".self_attn." in name or name.endswith("input_layernorm.weight")


def shard_kind(shard: int, frozen: int, mixed: int) -> str:
    if shard <= frozen:
        return "frozen"
    if shard <= frozen + mixed:
        return "mixed"
    return "changed"


def tokenizer_doc(seed: int, vocab: int = 32000) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 99])
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words: dict[str, int] = {}
    while len(words) < vocab:
        w = bytes(rng.choice(letters, int(rng.integers(1, 10)))).decode()
        w = ("\u0120" + w) if rng.random() < 0.5 else w
        words.setdefault(w, len(words))
    keys = list(words)
    merges = [f"{a} {b}" for a, b in zip(keys[0:20000:2], keys[1:20001:2], strict=True)]
    return {"version": "1.0", "model": {"type": "BPE", "vocab": words, "merges": merges}}


def gen_checkpoints(a: argparse.Namespace) -> None:
    from safetensors.numpy import save_file

    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [out / f"ckpt-{k}" for k in range(1, a.n + 1)]
    for d in dirs:
        d.mkdir(exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": a.hidden,
        "intermediate_size": a.inter,
        "num_hidden_layers": a.shards,
        "torch_dtype": "float16",
        "vocab_size": 32000,
    }
    tok = json.dumps(tokenizer_doc(a.seed), ensure_ascii=False, indent=2)
    for k, d in enumerate(dirs, start=1):
        (d / "config.json").write_text(json.dumps(config, indent=2))
        (d / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.7}))
        (d / "tokenizer.json").write_text(tok)
        history = [{"step": s, "loss": round(2.4 / (1 + s / 700), 5)} for s in range(0, 1000 * k, 25)]
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 1000 * k, "log_history": history}))

    changes: dict[str, Any] = {"params": vars(a) | {"op": None}, "checkpoints": {}}
    per_ckpt: dict[int, dict[str, Any]] = {
        k: {
            "changed": [],
            "changed_bytes": 0,
            "frozen_bytes": 0,
            "tensor_bytes": 0,
            "mixed_changed_bytes": 0,
            "mixed_frozen_bytes": 0,
            "mixed_files": [],
        }
        for k in range(2, a.n + 1)
    }
    for s in range(1, a.shards + 1):
        kind = shard_kind(s, a.frozen, a.mixed)
        fname = f"model-{s:05d}-of-{a.shards:05d}.safetensors"
        shapes = layer_shapes(s - 1, a.hidden, a.inter)
        tensors: dict[str, np.ndarray] = {}
        for ti, (name, shape) in enumerate(shapes.items()):
            rng = np.random.default_rng([a.seed, 1, s, ti])
            noise = rng.standard_normal(shape, dtype=np.float32)
            if "layernorm" in name:
                tensors[name] = (1.0 + 0.05 * noise).astype(np.float16)
            else:
                tensors[name] = (0.02 * noise).astype(np.float16)
        for k, d in enumerate(dirs, start=1):
            if k > 1:
                info = per_ckpt[k]
                if kind == "mixed":
                    info["mixed_files"].append(fname)
                for ti, (name, arr) in enumerate(list(tensors.items())):
                    frozen = kind == "frozen" or (kind == "mixed" and frozen_in_mixed(name))
                    info["tensor_bytes"] += arr.nbytes
                    if frozen:
                        info["frozen_bytes"] += arr.nbytes
                        if kind == "mixed":
                            info["mixed_frozen_bytes"] += arr.nbytes
                        continue
                    rng = np.random.default_rng([a.seed, k, s, ti])
                    upd = arr.astype(np.float32) + 0.002 * rng.standard_normal(arr.shape, dtype=np.float32)
                    tensors[name] = upd.astype(np.float16)
                    info["changed"].append({"file": fname, "tensor": name, "bytes": arr.nbytes})
                    info["changed_bytes"] += arr.nbytes
                    if kind == "mixed":
                        info["mixed_changed_bytes"] += arr.nbytes
            save_file(tensors, str(d / fname), metadata={"format": "pt"})
        print(
            f"shard {s}/{a.shards} ({kind}) written to {len(dirs)} checkpoints", file=sys.stderr, flush=True
        )
    for k, info in per_ckpt.items():
        info["frozen_fraction"] = round(info["frozen_bytes"] / info["tensor_bytes"], 4)
        info["files_bytes"] = sum(f.stat().st_size for f in dirs[k - 1].iterdir())
        changes["checkpoints"][f"ckpt-{k}"] = info
    changes["shard_kinds"] = {
        f"model-{s:05d}-of-{a.shards:05d}.safetensors": shard_kind(s, a.frozen, a.mixed)
        for s in range(1, a.shards + 1)
    }
    (out / "changes.json").write_text(json.dumps(changes, indent=1))
    for k, info in per_ckpt.items():
        print(
            f"ckpt-{k}: {info['changed_bytes'] / 1e6:.1f} MB of tensors changed, "
            f"{info['frozen_fraction']:.1%} of tensor bytes identical to ckpt-{k - 1}; "
            f"mixed shards: {info['mixed_changed_bytes'] / 1e6:.1f} MB changed, "
            f"{info['mixed_frozen_bytes'] / 1e6:.1f} MB frozen",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------------------------
# (b) dataset

EXTS = (".py", ".js", ".ts", ".md", ".txt", ".json", ".jsonl", ".yaml", ".csv")
EXT_P = (0.2, 0.12, 0.08, 0.12, 0.12, 0.12, 0.1, 0.07, 0.07)
SUBDIRS = ("src", "src", "tests", "docs", "data", "")
KEYWORDS = (
    "def",
    "return",
    "self",
    "import",
    "from",
    "class",
    "if",
    "else",
    "for",
    "in",
    "None",
    "True",
    "const",
    "let",
    "function",
    "await",
    "async",
    "null",
    "this",
    "new",
    "try",
    "except",
)


class TextGen:
    """Zipf-distributed words joined by separators, built with numpy gathers (no per-word Python)."""

    def __init__(self, seed: int, nwords: int = 30000) -> None:
        self.rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", dtype=np.uint8)
        freq = np.array(
            [
                12.7,
                9.1,
                8.2,
                7.5,
                7.0,
                6.7,
                6.3,
                6.1,
                6.0,
                4.3,
                4.0,
                2.8,
                2.8,
                2.4,
                2.4,
                2.2,
                2.0,
                2.0,
                1.9,
                1.5,
                1.0,
                0.8,
                0.15,
                0.15,
                0.1,
                0.07,
            ]
        )
        freq /= freq.sum()
        words: set[bytes] = set()
        while len(words) < nwords:
            words.add(bytes(self.rng.choice(letters, int(self.rng.integers(2, 12)), p=freq)))
        vocab = sorted(words)
        self.rng.shuffle(vocab)  # Zipf rank independent of spelling
        self.nwords = len(vocab)
        self.kw = [w.encode() for w in KEYWORDS]
        self.styles = {
            "prose": ([b" ", b" ", b". ", b", ", b".\n", b"\n\n"], [0.78, 0.06, 0.06, 0.05, 0.04, 0.01]),
            "code": (
                [b" ", b"(", b")\n", b"\n    ", b"\n        ", b" = ", b", ", b".", b"\n"],
                [0.35, 0.1, 0.08, 0.12, 0.08, 0.08, 0.07, 0.07, 0.05],
            ),
        }
        self.tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        ranks = np.arange(1, self.nwords + 1, dtype=np.float64)
        wcdf = np.cumsum(1.0 / ranks**1.05)
        wcdf /= wcdf[-1]
        self.wcdf = wcdf
        for style, (seps, sep_p) in self.styles.items():
            extra = self.kw if style == "code" else []
            pieces = vocab + extra + seps
            lens = np.array([len(p) for p in pieces], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
            blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)
            scdf = np.cumsum(np.array(sep_p, dtype=np.float64))
            scdf /= scdf[-1]
            self.tables[style] = (blob, starts, lens, scdf)

    def words(self, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.wcdf, self.rng.random(n)), self.nwords - 1)

    def text(self, nbytes: int, style: str) -> bytes:
        blob, starts, lens, scdf = self.tables[style]
        nkw = len(self.kw) if style == "code" else 0
        n = max(4, nbytes // 5 + 4)
        w = self.words(n)
        if nkw:
            kw = self.rng.random(n) < 0.25
            w[kw] = self.nwords + self.rng.integers(0, nkw, int(kw.sum()))
        s = self.nwords + nkw + np.minimum(np.searchsorted(scdf, self.rng.random(n)), len(scdf) - 1)
        idx = np.empty(2 * n, dtype=np.int64)
        idx[0::2], idx[1::2] = w, s
        pl = lens[idx]
        total = int(pl.sum())
        out_start = np.cumsum(pl) - pl
        gather = np.arange(total, dtype=np.int64) + np.repeat(starts[idx] - out_start, pl)
        return blob[gather][:nbytes].tobytes() + b"\n"

    def jsonl(self, nbytes: int, indent: bool = False) -> bytes:
        out: list[str] = []
        size = 0
        while size < nbytes:
            w = self.words(64)
            ints = self.rng.integers(0, 10**9, 32)
            fl = self.rng.random(32)
            vocab_text = self.text(64 * 8, "prose").decode().split()
            for r in range(8):
                t = vocab_text[r * 8 : r * 8 + 8] or ["x"]
                rec = (
                    f'{{"id": {ints[r]}, "name": "{t[0]}_{w[r]}", "score": {fl[r]:.4f}, '
                    f'"tags": ["{t[-1]}", "{t[1 % len(t)]}"], "text": "{" ".join(t[2:])}", '
                    f'"ok": {"true" if ints[r + 8] % 2 else "false"}}}'
                )
                if indent:
                    rec = "  " + rec.replace(", ", ",\n    ")
                out.append(rec)
                size += len(rec) + 1
        body = "\n".join(out) + "\n"
        return (('{"items": [\n' + body.replace("}\n", "},\n") + "]}\n") if indent else body).encode()

    def csv(self, nbytes: int) -> bytes:
        rows = ["id,name,score,label,text"]
        size = 0
        while size < nbytes:
            ints = self.rng.integers(0, 10**7, 64)
            fl = self.rng.random(64)
            words = self.text(64 * 40, "prose").decode().split()
            for r in range(64):
                t = words[r * 6 : r * 6 + 6] or ["x", "y"]
                row = f"{ints[r]},{t[0]},{fl[r]:.5f},{t[-1]},{' '.join(t[1:])}"
                rows.append(row)
                size += len(row) + 1
        return ("\n".join(rows) + "\n").encode()

    def yaml(self, nbytes: int) -> bytes:
        out: list[str] = []
        size = 0
        while size < nbytes:
            t = self.text(64 * 40, "prose").decode().split() + ["a"] * 320
            vals = self.rng.integers(0, 10**6, 64)
            for r in range(64):
                w = t[r * 5 : r * 5 + 5]
                line = f"{w[0]}:\n  {w[1]}: {w[2]}\n  value: {vals[r]}\n  note: {w[3]} {w[4]}\n"
                out.append(line)
                size += len(line)
        return "".join(out).encode()

    def content(self, ext: str, nbytes: int) -> bytes:
        if ext in (".py", ".js", ".ts"):
            return self.text(nbytes, "code")
        if ext == ".jsonl":
            return self.jsonl(nbytes)
        if ext == ".json":
            return self.jsonl(nbytes, indent=True)
        if ext == ".csv":
            return self.csv(nbytes)
        if ext == ".yaml":
            return self.yaml(nbytes)
        return self.text(nbytes, "prose")


def gen_dataset(a: argparse.Namespace) -> None:
    root = Path(a.dir)
    g = TextGen(a.seed)
    rng = g.rng
    per_app = a.files // a.apps - 1  # + metadata.json
    n = per_app * a.apps
    sizes = np.minimum(rng.lognormal(np.log(25000), 1.0, n), 1_500_000)
    sizes = (sizes * (a.mb * 1e6 / sizes.sum())).astype(np.int64) + 100
    exts = rng.choice(len(EXTS), n, p=np.array(EXT_P) / sum(EXT_P))
    total = i = 0
    for app in range(a.apps):
        split = "train" if app < a.apps - a.holdout else "holdout"
        d = root / split / f"app-{app:03d}"
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "app_id": f"app-{app:03d}",
            "split": split,
            "files": per_app,
            "license": "MIT",
            "language": ["python", "javascript", "typescript"][app % 3],
        }
        (d / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        for j in range(per_app):
            ext = EXTS[int(exts[i])]
            sub = SUBDIRS[j % len(SUBDIRS)]
            dd = d / sub if sub else d
            dd.mkdir(exist_ok=True)
            data = g.content(ext, int(sizes[i]))
            (dd / f"f{j:04d}{ext}").write_bytes(data)
            total += len(data)
            i += 1
    print(f"dataset: {i + a.apps} files, {total / 1e6:.1f} MB under {root}", file=sys.stderr)


def mutate(a: argparse.Namespace) -> None:
    root = Path(a.dir)
    every = sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in every if p.name != "metadata.json"]
    r = random.Random(a.seed)
    g = TextGen(a.seed)
    chosen = r.sample(files, round(len(files) * a.fraction))
    changed_bytes = 0
    for p in chosen:
        data = p.read_bytes()
        start = r.randrange(0, max(1, len(data) // 2))
        length = min(len(data) - start, r.randrange(500, 4000))
        new = g.text(length, "code" if p.suffix in (".py", ".js", ".ts") else "prose")[:length]
        line = b"# edited by gen_data.py mutate\n"
        p.write_bytes(data[:start] + new + data[start + length :] + line)
        changed_bytes += length + len(line)
    apps = sorted({p.parent for p in files})
    added_bytes = 0
    for k in range(a.add):
        ext = r.choice(EXTS)
        data = g.content(ext, r.randrange(5000, 200000))
        (r.choice(apps) / f"new-{a.seed}-{k:03d}{ext}").write_bytes(data)
        added_bytes += len(data)
    print(
        json.dumps(
            {
                "files_before": len(every),
                "modified": len(chosen),
                "modified_bytes_rewritten": changed_bytes,
                "added": a.add,
                "added_bytes": added_bytes,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="op", required=True)
    c = sub.add_parser("checkpoints")
    c.add_argument("dir")
    c.add_argument("--n", type=int, default=3)
    c.add_argument("--shards", type=int, default=10)
    c.add_argument("--frozen", type=int, default=2, help="shards with every tensor identical")
    c.add_argument("--mixed", type=int, default=3, help="shards mixing frozen and changed tensors")
    c.add_argument("--hidden", type=int, default=2048)
    c.add_argument("--inter", type=int, default=5632)
    c.add_argument("--seed", type=int, default=11)
    d = sub.add_parser("dataset")
    d.add_argument("dir")
    d.add_argument("--apps", type=int, default=50)
    d.add_argument("--holdout", type=int, default=10)
    d.add_argument("--files", type=int, default=10000, help="total, metadata.json included")
    d.add_argument("--mb", type=float, default=500)
    d.add_argument("--seed", type=int, default=7)
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("--fraction", type=float, default=0.02)
    m.add_argument("--add", type=int, default=10)
    m.add_argument("--seed", type=int, default=23)
    a = ap.parse_args()
    {"checkpoints": gen_checkpoints, "dataset": gen_dataset, "mutate": mutate}[a.op](a)


if __name__ == "__main__":
    main()
