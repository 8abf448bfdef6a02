#!/usr/bin/env bash
# Dataset versions benchmark (issue 14): the spec's snapshot_dataset.sh as written, restic, borg and
# `coldkeep datasets` on the same 10,000-file tree (bench/gen_data.py dataset: ~500 MB, 50 apps,
# 40 train / 10 holdout), one run.
#
#   bench/bench_datasets.sh      (2 vCPUs: ~6-10 min; + ~60 s data generation on first use)
#
# Steps, each tool on a fresh copy of the tree and an empty repository:
#   first snapshot (v1); 2 % of files changed (+10 added); snapshot (v2); unchanged snapshot (v3)
#   coldkeep also: `datasets status` on the unchanged and on the 2 %-changed tree (3 reps each), the unchanged
#   snapshot three ways (the same version again, --if-changed under a new name, a new name),
#   and `datasets export v2` against `tar czf` of the same tree (both verified with the real tools).
# Targets (issue 14): every snapshot <= the fastest peer; unchanged snapshot and status <= 0.5 s;
# stored bytes <= restic's; export >= 2x faster than `tar czf`.
#
# Environment knobs:
#   WORK=/tmp/coldkeep-bench-datasets   data, repositories, caches (never inside the git tree)
#   RESULTS=bench/results/datasets.jsonl (an existing file is moved to *.prev); the summary goes to
#           datasets-summary.md next to it
#   TOOLS="spec restic borg coldkeep"   QUIET_WAIT=5 (seconds to wait for an idle machine per step)
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
COLDKEEP_BIN=${COLDKEEP_BIN:-$ROOT/.venv/bin/coldkeep}
WORK=${WORK:-/tmp/coldkeep-bench-datasets}
RESULTS=${RESULTS:-$BENCH/results/datasets.jsonl}
TOOLS=${TOOLS:-"spec restic borg coldkeep"}
QUIET_WAIT=${QUIET_WAIT:-5}
export LC_ALL=C.UTF-8

case $WORK in "$ROOT"/*) echo "WORK must be outside the git tree" >&2; exit 2 ;; esac

DATA=$WORK/data/dataset
LIVE=$WORK/live/applications
OUT=$WORK/out
CACHE=$WORK/cache
LOGS=$WORK/logs
export RESTIC_PASSWORD=coldkeep-bench RESTIC_CACHE_DIR=$CACHE/restic
export BORG_PASSPHRASE=coldkeep-bench BORG_BASE_DIR=$CACHE/borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export COLDKEEP_CACHE_DIR=$CACHE/coldkeep
CK_CONFIG=$WORK/coldkeep.toml

log() { printf '=== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bytes_of() { find "$@" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }
need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install -y $2" >&2; exit 2; }; }
need restic restic; need borg borgbackup; need rsync rsync; need sha256sum coreutils; need tar tar
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 2; }
PYTHONDONTWRITEBYTECODE= "$PY" -m compileall -q "$ROOT/src/coldkeep" >/dev/null

mkdir -p "$WORK" "$LOGS" "$(dirname "$RESULTS")"
[ -f "$RESULTS" ] && mv "$RESULTS" "$RESULTS.prev"
RUN_ID=$(date +%Y%m%dT%H%M%S)

stamp="$(sha1sum "$BENCH/gen_data.py" | cut -c1-12) dataset"
if [ "$(cat "$DATA.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "generating $DATA"
  rm -rf "$DATA"; mkdir -p "$(dirname "$DATA")"
  "$PY" "$BENCH/gen_data.py" dataset "$DATA"
  echo "$stamp" >"$DATA.stamp"
fi
DS_FILES=$(find "$DATA" -type f | wc -l)
DS_BYTES=$(bytes_of "$DATA")
log "dataset: $DS_FILES files, $DS_BYTES bytes"

# the spec's scripts/snapshot_dataset.sh, as written, with its three settings pointed at this run
spec_script() { # VERSION
  sed -e "s|^DATASET_DIR=.*|DATASET_DIR=\"$LIVE\"|" -e "s|^SNAPSHOT_DIR=.*|SNAPSHOT_DIR=\"$OUT/spec\"|" \
      -e "s|^VERSION=.*|VERSION=\"$1\"|" "$BENCH/spec_snapshot_dataset.sh" >"$WORK/snapshot_dataset-$1.sh"
  echo "$WORK/snapshot_dataset-$1.sh"
}

M() { # TOOL STEP [measure.py options] -- command
  local t=$1 s=$2; shift 2
  sync
  "$PY" "$BENCH/measure.py" --out "$RESULTS" --workload datasets --tool "$t" --step "$s" --rep 1 \
    --quiet-wait "$QUIET_WAIT" --set "run=$RUN_ID" "$@"
}
ck() { "$COLDKEEP_BIN" --config "$CK_CONFIG" "$@"; }

fresh() { # TOOL: a fresh copy of the tree, an empty repository and caches
  rm -rf "$(dirname "$LIVE")" "$OUT" "$CACHE"; mkdir -p "$(dirname "$LIVE")" "$OUT" "$CACHE"
  cp -a "$DATA" "$LIVE"
  cat "$LIVE"/*/*/* >/dev/null 2>&1 || true
}
mutate() { "$PY" "$BENCH/gen_data.py" mutate "$LIVE" >"$LOGS/mutate-$1.txt"; }

snap() { # TOOL STEP VERSION [coldkeep args]
  local t=$1 s=$2 v=$3; shift 3
  case $t in
  spec)
    M "spec snapshot_dataset.sh" "$s" --stored "$OUT/spec" --bytes-in "$(bytes_of "$LIVE")" \
      --stdout "$LOGS/spec-$v.log" -- bash "$(spec_script "$v")" ;;
  restic)
    M "restic $(restic version | awk '{print $2}')" "$s" --stored "$OUT/restic" --bytes-in "$(bytes_of "$LIVE")" \
      --stdout "$LOGS/restic-$v.log" -- restic -r "$OUT/restic" backup --host bench --tag "$v" "$LIVE" ;;
  borg)
    M "borg $(borg --version | awk '{print $2}') (zstd,3)" "$s" --stored "$OUT/borg" --bytes-in "$(bytes_of "$LIVE")" \
      --stdout "$LOGS/borg-$v.log" -- borg create --stats --compression zstd,3 "$OUT/borg::$v" "$LIVE" ;;
  coldkeep)
    M "coldkeep datasets" "$s" --stored "$OUT/coldkeep" --bytes-in "$(bytes_of "$LIVE")" --json-stdout -- \
      "$COLDKEEP_BIN" --config "$CK_CONFIG" --json datasets snapshot --version "$v" --root "$LIVE" "$@" ;;
  esac
}

for t in $TOOLS; do
  log "$t"
  fresh "$t"
  case $t in
  restic) restic -q -r "$OUT/restic" init --repository-version 2 >/dev/null ;;
  borg) borg init --encryption=none "$OUT/borg" >/dev/null 2>&1 ;;
  coldkeep)
    printf '[repository]\nurl = "file://%s"\nowner = "%s"\n[datasets]\nroot = "%s"\n' "$OUT/coldkeep" "$(id -un)" "$LIVE" >"$CK_CONFIG"
    ck --quiet repo init >/dev/null; ck --quiet repo rebuild-cache >/dev/null ;;
  esac
  snap "$t" "first snapshot" v1
  if [ "$t" = coldkeep ]; then
    for rep in 1 2 3; do  # ~0.2-0.4 s each: one sample is noise (a lone 0.67 s once looked like a regression)
      M "coldkeep datasets" "status, unchanged tree" --rep "$rep" --json-stdout -- "$COLDKEEP_BIN" --config "$CK_CONFIG" --json datasets status
    done
  fi
  mutate "$t"
  if [ "$t" = coldkeep ]; then
    for rep in 1 2 3; do
      M "coldkeep datasets" "status, 2 % changed" --rep "$rep" --json-stdout -- "$COLDKEEP_BIN" --config "$CK_CONFIG" --json datasets status
    done
  fi
  snap "$t" "2 % changed snapshot" v2
  if [ "$t" = coldkeep ]; then
    snap coldkeep "unchanged snapshot (v2 again: no-op)" v2
    snap coldkeep "unchanged snapshot (--if-changed)" v3 --if-changed
    snap coldkeep "unchanged snapshot (new version name)" v3
    rm -rf "$WORK/export" "$WORK/targz"; mkdir -p "$WORK/export" "$WORK/targz"
    M "coldkeep datasets" "export v2 (tar.gz)" --bytes-in "$(bytes_of "$LIVE")" --stored "$WORK/export" --json-stdout -- \
      "$COLDKEEP_BIN" --config "$CK_CONFIG" --json datasets export v2 --to "$WORK/export"
    (cd "$WORK/export" && sha256sum -c --quiet ./*.sha256 && tar -tzf ./*.tar.gz >/dev/null) || { log "EXPORT CHECK FAILED"; exit 1; }
    M "tar czf" "export v2 (tar.gz)" --bytes-in "$(bytes_of "$LIVE")" --stored "$WORK/targz" -- \
      tar -czf "$WORK/targz/dataset.tar.gz" -C "$(dirname "$LIVE")" "$(basename "$LIVE")"
    ck --quiet datasets verify v2 --against "$LIVE" || { log "VERIFY FAILED"; exit 1; }
  else
    snap "$t" "unchanged snapshot" v3
  fi
done
rm -rf "$(dirname "$LIVE")" "$OUT" "$CACHE" "$WORK/export" "$WORK/targz"
"$PY" - "$RESULTS" <<'EOF' | tee "$(dirname "$RESULTS")/datasets-summary.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| tool | step | wall s | CPU s | stored MB | background CPU s |")
print("|---|---|---:|---:|---:|---:|")
for r in rows:
    stored = f"{r['stored_bytes'] / 1e6:.1f}" if r.get("stored_bytes") is not None else ""
    step = r["step"] + (f" (rep {r['rep']})" if r.get("rep", 1) > 1 else "")
    print(f"| {r['tool']} | {step} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {stored} | {r.get('background_cpu_s', 0):.2f} |")
EOF
