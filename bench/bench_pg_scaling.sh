#!/usr/bin/env bash
# Recovery at 1, 2 and 4 GB (issue 18): restore to a promoted server and WAL replay, coldkeep vs
# pgBackRest, in one run, with the machine's load; then the scaling table and the 1 TB projection.
#
#   bench/bench_pg_scaling.sh        (as root; ~40 min on 2 vCPUs with the defaults)
#
# For each size in SIZES (MB): a fresh database of that size (bench/bench_pg.sh stages load, setup,
# one day of backups by coldkeep and pgBackRest), RESTORE_REPEATS restores per tool (alternating,
# `coldkeep pg restore --immediate --start` vs pgBackRest restore + pg_ctl start; files phase and
# start→promoted phase apart), then that many MB of pgbench WAL archived by cp, coldkeep and
# pgBackRest and replayed REPLAY_REPEATS times per restore_command (order rotating): cp (the floor:
# PostgreSQL's own replay), coldkeep-prefetch (what `pg restore` writes) and pgBackRest
# `archive-get --archive-async --process-max=2`.
# Results: bench/results/pg-scaling/<size>/pg.jsonl (+ pg-loadavg.log, pg-summary.md) and
# bench/results/pg-scaling/summary.md (bench/pg_scaling.py).
#
# Knobs: SIZES="1000 2000 4000" RESTORE_REPEATS=5 REPLAY_REPEATS=3 WORK=/tmp/coldkeep-pgbench-scaling
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
SIZES=${SIZES:-"1000 2000 4000"}
OUT=${OUT:-$BENCH/results/pg-scaling}
export WORK=${WORK:-/tmp/coldkeep-pgbench-scaling}
mkdir -p "$OUT"
started=$(date +%s)
for mb in $SIZES; do
  echo "=== [$(date +%H:%M:%S)] size $mb MB" >&2
  rm -rf "${OUT:?}/$mb"
  RESULTS_DIR="$OUT/$mb" DB_MB="$mb" REPLAY_MB="$mb" DAYS=1 \
    STAGES="load setup days restore replay" \
    BACKUP_TOOLS="coldkeep pgbackrest" RESTORE_TOOLS="coldkeep pgbackrest" \
    RESTORE_REPEATS="${RESTORE_REPEATS:-5}" REPLAY_REPEATS="${REPLAY_REPEATS:-3}" \
    REPLAY_VARIANTS="cp coldkeep-prefetch pgbackrest-async" \
    bash "$BENCH/bench_pg.sh"
done
echo "=== [$(date +%H:%M:%S)] done in $(( $(date +%s) - started )) s" >&2
"$PY" "$BENCH/pg_scaling.py" "$OUT" $SIZES | tee "$OUT/summary.md"
