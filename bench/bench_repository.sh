#!/usr/bin/env bash
# Repository benchmark: coldkeep vs restic, borg and `tar | zstd -T0 -3` on the same data, in one run.
#
#   bench/bench_repository.sh   (2 vCPUs: 15-23 min on a busy shared machine, ~10 min idle (estimated);
#                                + ~80 s data generation on first use)
#
# Workloads (data from bench/gen_data.py, generated once into $WORK/data and reused while the
# generator and its arguments are unchanged):
#   checkpoints  3 x ~1 GiB float16 safetensors checkpoints, ~30 % of tensor bytes identical between
#                consecutive ones (2 frozen shards, 3 mixed shards, 5 changed shards).
#                Steps: backup ckpt-1, ckpt-2, ckpt-3 (wall, CPU, peak RSS, stored bytes after each),
#                restore ckpt-3 (wall; then diff -r against the source, untimed).
#   mixed        only the 3 mixed shards: backup ckpt-1's, then ckpt-2's, into a fresh repository;
#                the second step's stored bytes vs. the bytes of the tensors that changed.
#   dataset      ~500 MB tree of 10,000 files in 50 apps (40 train / 10 holdout).
#                Steps: first backup, unchanged re-backup, 2 % of files changed (+10 added) + backup,
#                restore of that last snapshot (diff -r against the live tree, untimed).
# Each tool starts from an empty repository and empty caches; the dataset from a fresh copy.
# Every timed step runs after `sync`, from a warm page cache (sources are read once before a tool's
# checkpoint steps), like the peer measurements in /work/shared/peer-bench.
#
# Environment knobs:
#   WORK=/tmp/coldkeep-bench   data, repositories, caches, restores (never inside the git tree)
#   RESULTS=bench/results/repository.jsonl   (an existing file is moved to *.prev unless APPEND=1;
#           the summary goes to repository-summary.md and the machine description to
#           repository-machine.txt next to it)
#   TOOLS="coldkeep restic borg tarzstd"   COLDKEEP_REPS=3   PEER_REPS=2
#   WORKLOADS="checkpoints mixed dataset"
#   QUIET_WAIT=5    before each timed step, wait up to this many seconds for the machine to be idle
#                   (records background_cpu_s either way: other users' CPU during the step)
#   BORG_ENCRYPTION=none (coldkeep runs unencrypted; restic cannot, it always encrypts)
#   COLDKEEP_PASSWORD=...  set it to run coldkeep encrypted (AES-256-GCM) instead
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
COLDKEEP_BIN=${COLDKEEP_BIN:-$ROOT/.venv/bin/coldkeep}
WORK=${WORK:-/tmp/coldkeep-bench}
RESULTS=${RESULTS:-$BENCH/results/repository.jsonl}
TOOLS=${TOOLS:-"coldkeep restic borg tarzstd"}
WORKLOADS=${WORKLOADS:-"checkpoints mixed dataset"}
COLDKEEP_REPS=${COLDKEEP_REPS:-3}
PEER_REPS=${PEER_REPS:-2}
BORG_ENCRYPTION=${BORG_ENCRYPTION:-none}
QUIET_WAIT=${QUIET_WAIT:-5}   # seconds each step may wait for other users' load to stop (0: never wait)
export LC_ALL=C.UTF-8

case $WORK in "$ROOT"/*) if [ "$WORK" != "$ROOT/bench/work" ] && [[ $WORK != "$ROOT/bench/work/"* ]]; then
  echo "WORK must be outside the git tree (or under bench/work/)" >&2; exit 2; fi ;; esac

DATA=$WORK/data
CKPT=$DATA/checkpoints
MIXED=$DATA/mixed
PRISTINE=$DATA/dataset
LIVE=$WORK/live/dataset
REPOS=$WORK/repos
RESTORE=$WORK/restore
CACHE=$WORK/cache
LOGS=$WORK/logs
# Trees of many files are moved here, not deleted, until the run ends: on an ext4 without a journal
# (this VM's root filesystem) creating a file scans past every inode deleted in the last ~60 s
# (ext4's recently_deleted()), so a restore of 10,000 files right after 10,000 were deleted spends
# most of its time in the kernel (perf: find_get_block_common + recently_deleted), by an amount
# that depends on how long ago the delete ran: noise, not the tool's cost
TRASH=$WORK/trash
discard() { local p; for p in "$@"; do [ -e "$p" ] && mv "$p" "$TRASH/$(date +%s%N)-$(basename "$p")"; done; return 0; }

export RESTIC_PASSWORD=coldkeep-bench RESTIC_CACHE_DIR=$CACHE/restic
export BORG_PASSPHRASE=coldkeep-bench BORG_BASE_DIR=$CACHE/borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export COLDKEEP_CACHE_DIR=$CACHE/coldkeep
CK_CONFIG=$WORK/coldkeep.toml

log() { printf '=== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# apparent bytes of the regular files under the paths (directories not counted, as in measure.py)
bytes_of() { find "$@" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install -y $2" >&2; exit 2; }; }
need restic restic; need borg borgbackup; need zstd zstd; need tar tar
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 2; }
[ -x "$COLDKEEP_BIN" ] || { echo "missing $COLDKEEP_BIN: make venv" >&2; exit 2; }
# an installed coldkeep runs from byte-code compiled at install time; the editable checkout may not
# have it (PYTHONDONTWRITEBYTECODE=1 in some shells), which would add ~30 ms of compiling per command
PYTHONDONTWRITEBYTECODE= "$PY" -m compileall -q "$ROOT/src/coldkeep" >/dev/null

RUN_ID=$(date +%Y%m%dT%H%M%S)
rm -rf "$TRASH"
mkdir -p "$WORK" "$DATA" "$LOGS" "$TRASH" "$(dirname "$RESULTS")"
if [ "${APPEND:-0}" != 1 ] && [ -f "$RESULTS" ]; then mv "$RESULTS" "$RESULTS.prev"; fi

# ---------------------------------------------------------------------------------------------
# data (generated once; a stamp of the generator's hash + arguments decides whether to redo it)

GEN_HASH=$(sha1sum "$BENCH/gen_data.py" | cut -c1-12)
generate() { # DIR ARGS...
  local dir=$1; shift
  local stamp="$GEN_HASH $*"
  if [ "$(cat "$dir.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "generating $dir ($*)"
    rm -rf "$dir" "$dir.stamp"
    "$PY" "$BENCH/gen_data.py" "$@" "$dir"
    echo "$stamp" >"$dir.stamp"
  fi
}
generate "$CKPT" checkpoints
generate "$PRISTINE" dataset
if [ "$(cat "$MIXED.stamp" 2>/dev/null)" != "$(cat "$CKPT.stamp")" ]; then
  rm -rf "$MIXED"
  for k in 1 2; do
    mkdir -p "$MIXED/ckpt-$k"
    for f in $("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(' '.join(d['checkpoints']['ckpt-2']['mixed_files']))" "$CKPT/changes.json"); do
      cp "$CKPT/ckpt-$k/$f" "$MIXED/ckpt-$k/$f"
    done
  done
  cp "$CKPT.stamp" "$MIXED.stamp"
fi
CK_BYTES=(0 "$(bytes_of "$CKPT/ckpt-1")" "$(bytes_of "$CKPT/ckpt-2")" "$(bytes_of "$CKPT/ckpt-3")")
MIXED_BYTES=(0 "$(bytes_of "$MIXED/ckpt-1")" "$(bytes_of "$MIXED/ckpt-2")")
read -r CHANGED_BYTES MIXED_CHANGED_BYTES < <("$PY" -c "import json,sys; c=json.load(open(sys.argv[1]))['checkpoints']['ckpt-2']; print(c['changed_bytes'], c['mixed_changed_bytes'])" "$CKPT/changes.json")
DS_FILES=$(find "$PRISTINE" -type f | wc -l)
DS_BYTES=$(bytes_of "$PRISTINE")
log "checkpoints: ${CK_BYTES[*]:1} bytes; changed tensors per step $CHANGED_BYTES (mixed shards $MIXED_CHANGED_BYTES); dataset: $DS_FILES files, $DS_BYTES bytes"

# machine and versions, for docs/benchmarks.md
{
  echo "date: $(date -Is)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "ram: $(free -b | awk '/Mem:/ {printf "%.1f GiB", $2/2^30}')"
  echo "kernel: $(uname -sr)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "filesystem: $(df -T "$WORK" | awk 'NR==2 {print $2, $1}')"
  echo "python: $("$PY" --version 2>&1)"
  echo "coldkeep: $("$COLDKEEP_BIN" --version 2>&1 | tail -1); git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo n/a)$(cd "$ROOT" && [ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain -- src 2>/dev/null)" ] && echo " (src modified)")"
  echo "libs: $("$PY" -c 'import zstandard, blake3, pyfastcdc, cryptography; from importlib.metadata import version as v; print(*(f"{m} {v(m)}" for m in ("zstandard", "blake3", "pyfastcdc", "cryptography")), sep=", ")')"
  echo "restic: $(restic version | head -1)"
  echo "borg: $(borg --version)"
  echo "zstd: $(zstd --version)"
  echo "tar: $(tar --version | head -1)"
  echo "checkpoint bytes: ${CK_BYTES[*]:1}"
  echo "changed tensor bytes per checkpoint: $CHANGED_BYTES (mixed shards: $MIXED_CHANGED_BYTES)"
  echo "dataset: $DS_FILES files, $DS_BYTES bytes"
  echo "coldkeep encrypted: $([ -n "${COLDKEEP_PASSWORD:-}" ] && echo yes || echo no); borg encryption: $BORG_ENCRYPTION"
} >"$(dirname "$RESULTS")/repository-machine.txt"

# ---------------------------------------------------------------------------------------------
# tools: init REPO / backup REPO NAME SRC(absolute) / restore REPO NAME SRC TARGET

label() {
  case $1 in
  coldkeep) echo "coldkeep $("$COLDKEEP_BIN" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -1)$([ -n "${COLDKEEP_PASSWORD:-}" ] && echo " (encrypted)")" ;;
  restic) echo "restic $(restic version | awk '{print $2}') (v2, auto)" ;;
  borg) echo "borg $(borg --version | awk '{print $2}') (zstd,3, $BORG_ENCRYPTION)" ;;
  tarzstd) echo "tar | zstd -T0 -3" ;;
  esac
}

M() { # WORKLOAD TOOL STEP REP [measure.py options] -- command
  local w=$1 t=$2 s=$3 r=$4; shift 4
  sync
  "$PY" "$BENCH/measure.py" --out "$RESULTS" --workload "$w" --tool "$(label "$t")" --step "$s" --rep "$r" \
    --quiet-wait "$QUIET_WAIT" --set "run=$RUN_ID" "$@"
}

ck() { "$COLDKEEP_BIN" --config "$CK_CONFIG" "$@"; }

tool_init() { # TOOL REPO
  local t=$1 r=$2
  rm -rf "$r" "$CACHE"
  mkdir -p "$CACHE" "$(dirname "$r")"
  case $t in
  coldkeep)
    if [ -n "${COLDKEEP_PASSWORD:-}" ]; then
      printf '%s\n' "$COLDKEEP_PASSWORD" >"$WORK/coldkeep.pass"; chmod 600 "$WORK/coldkeep.pass"
      pwline="password_file = \"$WORK/coldkeep.pass\""
    else pwline=""; fi
    printf '[repository]\nurl = "file://%s"\nowner = "%s"\n%s\n' "$r" "$(id -un)" "$pwline" >"$CK_CONFIG"
    ck --quiet repo init >/dev/null
    # create the local index cache now: a first backup that has to create it races two worker
    # threads on Repository.cache and fails ~4 % of the time with "database is locked" (reported)
    ck --quiet repo rebuild-cache >/dev/null ;;
  restic) restic -q -r "$r" init --repository-version 2 >/dev/null ;;
  borg) borg init --encryption="$BORG_ENCRYPTION" "$r" >/dev/null 2>&1 ;;
  tarzstd) mkdir -p "$r" ;;
  esac
}

do_backup() { # WORKLOAD TOOL REP REPO NAME SRC STEP [extra measure args]
  local w=$1 t=$2 rep=$3 r=$4 n=$5 s=$6 step=$7; shift 7
  local before; before=$(bytes_of "$r")
  case $t in
  tarzstd)
    M "$w" "$t" "$step" "$rep" --stored "$r" --bytes-in "$(bytes_of "$s")" --set "stored_before=$before" "$@" -- \
      bash -c "set -o pipefail; tar -C '$(dirname "$s")' -cf - '$(basename "$s")' | zstd -T0 -3 -q -o '$r/$n.tar.zst'" ;;
  coldkeep)
    M "$w" "$t" "$step" "$rep" --stored "$r" --bytes-in "$(bytes_of "$s")" --set "stored_before=$before" "$@" \
      --json-stdout -- "$COLDKEEP_BIN" --config "$CK_CONFIG" --json backup --label "$n" "$s" ;;
  restic)
    M "$w" "$t" "$step" "$rep" --stored "$r" --bytes-in "$(bytes_of "$s")" --set "stored_before=$before" "$@" \
      --stdout "$LOGS/restic-$n.log" -- restic -r "$r" backup --host bench "$s" ;;
  borg)
    M "$w" "$t" "$step" "$rep" --stored "$r" --bytes-in "$(bytes_of "$s")" --set "stored_before=$before" "$@" \
      --stdout "$LOGS/borg-$n.log" -- borg create --stats --compression zstd,3 "$r::$n" "$s" ;;
  esac
}

do_restore() { # WORKLOAD TOOL REP REPO NAME SRC STEP  -> restores into $RESTORE/$TOOL, checks it
  local w=$1 t=$2 rep=$3 r=$4 n=$5 s=$6 step=$7 target=$RESTORE/$2 got
  discard "$target"; mkdir -p "$target"
  case $t in
  tarzstd)
    M "$w" "$t" "$step" "$rep" --bytes-in "$(bytes_of "$s")" -- \
      bash -c "set -o pipefail; zstd -dc -q '$r/$n.tar.zst' | tar -C '$target' -xf -"
    got=$target/$(basename "$s") ;;
  coldkeep)
    local id
    id=$(ck --json snapshots | "$PY" -c "import json,sys; print([s['id'] for s in json.load(sys.stdin) if s['label']==sys.argv[1]][-1])" "$n")
    M "$w" "$t" "$step" "$rep" --bytes-in "$(bytes_of "$s")" --json-stdout -- \
      "$COLDKEEP_BIN" --config "$CK_CONFIG" --json restore "$id" --target "$target"
    got=$target/${s#/} ;;
  restic)
    M "$w" "$t" "$step" "$rep" --bytes-in "$(bytes_of "$s")" --stdout "$LOGS/restic-restore-$n.log" -- \
      restic -r "$r" restore latest --path "$s" --target "$target"
    got=$target/${s#/} ;;
  borg)
    M "$w" "$t" "$step" "$rep" --bytes-in "$(bytes_of "$s")" -- env -C "$target" borg extract "$r::$n"
    got=$target/${s#/} ;;
  esac
  if ! diff -r "$s" "$got" >"$LOGS/diff-$t-$n.txt" 2>&1; then
    log "RESTORE MISMATCH ($t $n): see $LOGS/diff-$t-$n.txt"; exit 1
  fi
  if [ "$w" = dataset ]; then discard "$target"; else rm -rf "$target"; fi  # a few big files: deleted
}

# ---------------------------------------------------------------------------------------------
# workloads

run_checkpoints() { # TOOL REP
  local t=$1 rep=$2 r=$REPOS/$1 k
  log "$t rep $rep: checkpoints"
  cat "$CKPT"/ckpt-*/* >/dev/null # warm page cache
  tool_init "$t" "$r"
  for k in 1 2 3; do
    do_backup checkpoints "$t" "$rep" "$r" "ckpt-$k" "$CKPT/ckpt-$k" "backup ckpt-$k" \
      --set "changed_tensor_bytes=$([ $k -gt 1 ] && echo "$CHANGED_BYTES" || echo null)"
  done
  do_restore checkpoints "$t" "$rep" "$r" ckpt-3 "$CKPT/ckpt-3" "restore ckpt-3"
  rm -rf "$r"
}

run_mixed() { # TOOL REP
  local t=$1 rep=$2 r=$REPOS/$1-mixed
  [ "$t" = tarzstd ] && return 0
  log "$t rep $rep: mixed shards"
  tool_init "$t" "$r"
  do_backup mixed "$t" "$rep" "$r" mixed-1 "$MIXED/ckpt-1" "backup mixed shards of ckpt-1"
  do_backup mixed "$t" "$rep" "$r" mixed-2 "$MIXED/ckpt-2" "backup mixed shards of ckpt-2" \
    --set "changed_tensor_bytes=$MIXED_CHANGED_BYTES"
  rm -rf "$r"
}

run_dataset() { # TOOL REP
  local t=$1 rep=$2 r=$REPOS/$1 mut
  log "$t rep $rep: dataset"
  discard "$(dirname "$LIVE")"; mkdir -p "$(dirname "$LIVE")"
  cp -a "$PRISTINE" "$LIVE"
  tool_init "$t" "$r"
  do_backup dataset "$t" "$rep" "$r" ds-1 "$LIVE" "first backup" --set "files=$DS_FILES"
  do_backup dataset "$t" "$rep" "$r" ds-2 "$LIVE" "unchanged re-backup" --set "files=$DS_FILES"
  mut=$("$PY" "$BENCH/gen_data.py" mutate "$LIVE")
  do_backup dataset "$t" "$rep" "$r" ds-3 "$LIVE" "2 % changed + backup" \
    --set "files=$(find "$LIVE" -type f | wc -l)" --set "mutation=$mut"
  do_restore dataset "$t" "$rep" "$r" ds-3 "$LIVE" "restore (after change)"
  rm -rf "$r"; discard "$(dirname "$LIVE")"
}

started=$(date +%s)
maxrep=$(( COLDKEEP_REPS > PEER_REPS ? COLDKEEP_REPS : PEER_REPS ))
for rep in $(seq 1 "$maxrep"); do
  for t in $TOOLS; do
    if [ "$t" = coldkeep ]; then [ "$rep" -le "$COLDKEEP_REPS" ] || continue
    else [ "$rep" -le "$PEER_REPS" ] || continue; fi
    for w in $WORKLOADS; do "run_$w" "$t" "$rep"; done
  done
done
rm -rf "$REPOS" "$RESTORE" "$CACHE" "$TRASH"
log "done in $(( $(date +%s) - started )) s; results in $RESULTS"
"$PY" "$BENCH/summarize.py" "$RESULTS" --machine "$(dirname "$RESULTS")/repository-machine.txt" \
  --changes "$CKPT/changes.json" | tee "$(dirname "$RESULTS")/repository-summary.md"
