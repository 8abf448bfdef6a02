#!/usr/bin/env bash
# Checkpoint benchmark (issue 13): the spec's archive_checkpoints.py (as written), coldkeep, restic
# and borg on the same checkpoints, in one run.
#
#   bench/bench_checkpoints.sh      (2 vCPUs: ~10 min, most of it the spec's gzip -9; + ~1 min of
#                                    data generation on first use)
#
# Data (generated once into $WORK/data, reused while the generators are unchanged):
#   3 x ~1 GiB float16 checkpoints, ~30 % of tensor bytes identical between consecutive ones
#   (bench/gen_data.py checkpoints), one 40-shard checkpoint with 2,000 tensors
#   (bench/gen_ckpt_extra.py forty), laid out as cet-d-bench/checkpoint-2025100{1,2,3,4}_000000, plus
#   a small newest checkpoint (the newest of a phase stays hot) -- so four checkpoints are due.
# Steps (each tool from an empty repository, the hot directories fresh hard-link copies):
#   archive   spec: move + make_archive(gztar) + rmtree, per checkpoint;
#             coldkeep: `checkpoints archive` = store + verify the stored copy against the hot files
#             (every byte read back from the repository, size + SHA-256) + remove the hot copy;
#             restic / borg: backup of each checkpoint + check --read-data (restic) / check
#             --verify-data (borg) + rm -rf (their nearest equivalent), when installed.
#   stored    bytes of the archive directory / repository afterwards.
#   recover   coldkeep `checkpoints recover NAME --to DIR` (restore + verify every file) vs
#             `zstd -dc ckpt.tar.zst | tar -x` + `sha256sum` of the same files (the tar.zst made
#             untimed first).
#   list      `checkpoints list --json` over 1,000 checkpoints (10 phases).
# Targets: archive >= 10x faster than the spec; stored <= borg's; recover <= tar|zstd -d + sha256sum;
# list < 1 s.  Results: $RESULTS (JSON lines, bench/measure.py) and a table on stdout for
# docs/benchmarks.md.
#
# Environment knobs: WORK=/tmp/coldkeep-bench-ckpt  RESULTS=bench/results/checkpoints.jsonl
#   TOOLS="spec coldkeep restic borg"  QUIET_WAIT=5
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
CK=${COLDKEEP_BIN:-$ROOT/.venv/bin/coldkeep}
WORK=${WORK:-/tmp/coldkeep-bench-ckpt}
RESULTS=${RESULTS:-$BENCH/results/checkpoints.jsonl}
TOOLS=${TOOLS:-"spec coldkeep restic borg"}
QUIET_WAIT=${QUIET_WAIT:-5}
export LC_ALL=C.UTF-8 COLDKEEP_CACHE_DIR=$WORK/cache/coldkeep
export RESTIC_PASSWORD=coldkeep-bench RESTIC_CACHE_DIR=$WORK/cache/restic
export BORG_PASSPHRASE=coldkeep-bench BORG_BASE_DIR=$WORK/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes

case $WORK in "$ROOT"/*) echo "WORK must be outside the git tree" >&2; exit 2 ;; esac
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 2; }
command -v zstd >/dev/null || { echo "missing zstd: apt-get install -y zstd" >&2; exit 2; }

log() { printf '=== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bytes_of() { find "$@" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }
M() { # TOOL STEP [measure.py options] -- command
  local t=$1 s=$2; shift 2
  "$PY" "$BENCH/measure.py" --out "$RESULTS" --workload checkpoints --tool "$t" --step "$s" \
    --quiet-wait "$QUIET_WAIT" "$@"
}

DATA=$WORK/data
GEN_MARK="$(sha1sum "$BENCH/gen_data.py" "$BENCH/gen_ckpt_extra.py" | sha1sum | cut -c1-12)"
if [ "$(cat "$DATA/.mark" 2>/dev/null)" != "$GEN_MARK" ]; then
  log "generating data"
  rm -rf "$DATA"; mkdir -p "$DATA/hot/cet-d-bench"
  "$PY" "$BENCH/gen_data.py" checkpoints "$DATA/gen" --n 3
  for k in 1 2 3; do mv "$DATA/gen/ckpt-$k" "$DATA/hot/cet-d-bench/checkpoint-2025100${k}_000000"; done
  "$PY" "$BENCH/gen_ckpt_extra.py" forty "$DATA/hot/cet-d-bench/checkpoint-20251004_000000"
  "$PY" "$BENCH/gen_ckpt_extra.py" many "$DATA/small" 1
  mv "$DATA/small/cet-d-phase0/"* "$DATA/hot/cet-d-bench/checkpoint-20991231_000000"  # the newest stays hot
  "$PY" "$BENCH/gen_ckpt_extra.py" many "$DATA/many" 1000
  rm -rf "$DATA/gen" "$DATA/small"
  echo "$GEN_MARK" >"$DATA/.mark"
fi
DUE="checkpoint-20251001_000000 checkpoint-20251002_000000 checkpoint-20251003_000000 checkpoint-20251004_000000"
IN=0; for d in $DUE; do IN=$((IN + $(bytes_of "$DATA/hot/cet-d-bench/$d"))); done
mkdir -p "$(dirname "$RESULTS")"; [ -f "$RESULTS" ] && mv "$RESULTS" "$RESULTS.prev"
fresh_hot() { rm -rf "$1"; mkdir -p "$1"; cp -al "$DATA/hot/." "$1/"; sync; cat "$1"/cet-d-bench/*/* >/dev/null; }

ckconfig() { # HOT REPO -> config path
  cat >"$WORK/coldkeep.toml" <<EOF
[repository]
url = "file://$2"
owner = "$(id -un)"
[checkpoints]
root = "$1"
settle_seconds = 0
EOF
  echo "$WORK/coldkeep.toml"
}

for tool in $TOOLS; do
  HOT=$WORK/hot-$tool; REPO=$WORK/repo-$tool
  rm -rf "$REPO" "$WORK/cache"; fresh_hot "$HOT"
  case $tool in
  spec)
    log "spec: archive_checkpoints.py"
    M spec archive --bytes-in "$IN" --stored "$REPO" -- env CHECKPOINT_DIR="$HOT" ARCHIVE_DIR="$REPO" \
      "$PY" "$BENCH/ckpt_spec_script.py"
    ;;
  coldkeep)
    cfg=$(ckconfig "$HOT" "$REPO")
    "$CK" --config "$cfg" repo init >/dev/null
    log "coldkeep: checkpoints archive"
    M coldkeep archive --bytes-in "$IN" --stored "$REPO" --json-stdout -- "$CK" --config "$cfg" --json checkpoints archive
    for d in $DUE; do [ ! -e "$HOT/cet-d-bench/$d" ] || { echo "coldkeep left $d hot" >&2; exit 1; }; done
    log "coldkeep: recover"
    rm -rf "$WORK/rec"
    M coldkeep recover --bytes-in "$(bytes_of "$DATA/hot/cet-d-bench/checkpoint-20251003_000000")" -- \
      "$CK" --config "$cfg" checkpoints recover cet-d-bench/checkpoint-20251003_000000 --to "$WORK/rec"
    diff -r "$DATA/hot/cet-d-bench/checkpoint-20251003_000000" "$WORK/rec" >&2
    log "tar|zstd baseline: restore + sha256sum"
    tar -cf - -C "$DATA/hot/cet-d-bench" checkpoint-20251003_000000 | zstd -T0 -3 -q -f -o "$WORK/c3.tar.zst"
    rm -rf "$WORK/rec"; mkdir -p "$WORK/rec"
    M "tar|zstd -d + sha256sum" recover -- bash -c "set -o pipefail; zstd -dc '$WORK/c3.tar.zst' | tar -x -C '$WORK/rec' \
      && cd '$WORK/rec' && find . -type f -print0 | xargs -0 sha256sum >/dev/null"
    rm -rf "$WORK/rec" "$WORK/c3.tar.zst"
    log "coldkeep: list over 1,000 checkpoints"
    cfg=$(ckconfig "$DATA/many" "$REPO")
    "$CK" --config "$cfg" checkpoints list --json >/dev/null  # config validated once (as in production)
    M coldkeep "list 1000" --stdout "$WORK/list.json" -- "$CK" --config "$cfg" --json checkpoints list
    ;;
  restic|borg)
    if ! command -v "$tool" >/dev/null; then log "$tool not installed: skipped"; continue; fi
    if [ "$tool" = restic ]; then
      restic init -r "$REPO" >/dev/null
      cmd="for d in $DUE; do restic -r '$REPO' backup -q '$HOT/cet-d-bench/'\$d; done && restic -r '$REPO' check --read-data -q"
    else
      borg init -e none "$REPO"
      cmd="for d in $DUE; do borg create --compression zstd,3 '$REPO::'\$d '$HOT/cet-d-bench/'\$d; done && borg check --verify-data '$REPO'"
    fi
    log "$tool: backup + verify + remove"
    M "$tool" archive --bytes-in "$IN" --stored "$REPO" -- bash -c "set -e; $cmd; for d in $DUE; do rm -rf '$HOT/cet-d-bench/'\$d; done"
    ;;
  esac
  rm -rf "$HOT"
done

"$PY" - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
get = lambda tool, step: next((r for r in rows if r["tool"] == tool and r["step"] == step), None)
print("| tool | step | wall s | CPU s | others' CPU s | peak RSS MiB | stored MB |\n|---|---|---|---|---|---|---|")
for r in rows:
    stored = f"{r['stored_bytes'] / 1e6:.0f}" if r.get("stored_bytes") else ""
    print(f"| {r['tool']} | {r['step']} | {r['wall_s']:.2f} | {r['cpu_s']:.1f} | {r.get('background_cpu_s', 0):.0f} "
          f"| {r['max_rss_mb']:.0f} | {stored} |")
spec, ck = get("spec", "archive"), get("coldkeep", "archive")
if spec and ck:
    print(f"\narchive: coldkeep {spec['wall_s'] / ck['wall_s']:.1f}x faster than the spec's script (target >= 10x); "
          f"CPU {spec['cpu_s'] / ck['cpu_s']:.1f}x less")
borg = get("borg", "archive")
if borg and ck:
    print(f"stored: coldkeep {ck['stored_bytes'] / borg['stored_bytes']:.3f} x borg's (target <= 1)")
rec, base = get("coldkeep", "recover"), get("tar|zstd -d + sha256sum", "recover")
if rec and base:
    print(f"recover: {rec['wall_s'] / base['wall_s']:.2f} x tar|zstd -d + sha256sum (target <= 1)")
lst = get("coldkeep", "list 1000")
if lst:
    print(f"list over 1,000 checkpoints: {lst['wall_s']:.2f} s (target < 1 s)")
EOF
