#!/usr/bin/env bash
# PostgreSQL benchmark: coldkeep vs pgBackRest vs `pg_basebackup -Ft -z`, in one run, on one
# realistic database (a text-heavy `conversations` table + pgbench tables), as the issue asks.
#
#   bench/bench_pg.sh                      (~30-35 min on 2 vCPUs with the defaults; run as root)
#   DB_MB=200 DAYS=2 TPS_REPEATS=1 DURATION=10 RESTORE_REPEATS=1 BACKLOG_MB=256 REPLAY_MB=256 bench/bench_pg.sh   (smoke, ~6 min)
#
# Stages (STAGES, in this order; each needs the ones before it):
#   load     initdb --data-checksums, pgbench -i (25 % of DB_MB) + conversations (75 %, bench/pg_load.py)
#   setup    coldkeep repo init + `pg setup --apply --coldkeep-path RUNNER`, pgBackRest stanza-create;
#            archive_command = coldkeep wal-push && pgbackrest archive-push (both archives get all WAL)
#   days     DAYS daily backups: day 0 as loaded, then each day inserts 2 % new rows and updates 0.2 %
#            at random (pg_load.py day); every day: `coldkeep pg backup`, pgBackRest (full on day 0,
#            incr after), `pg_basebackup -Ft -z -X stream -c fast` (order rotates by day); stored bytes
#   restore  latest backup -> running, promoted server (wall), RESTORE_REPEATS times per tool
#   tps      `pgbench -c4 -j2 -T DURATION` per archive_command (TPS_VARIANTS), TPS_REPEATS alternating
#            rounds (order rotates each round); .ready backlog right at the end; time to drain it
#   drain    BACKLOG_MB of WAL produced with archiving paused, then the variant enabled: segments/s
#   replay   base backup (-X none) + REPLAY_MB of pgbench WAL archived by every tool; recovery time
#            through each restore_command (REPLAY_VARIANTS)
#   segcost  per-segment process cost of wal-push / wal-fetch vs pgBackRest, import profile
# Results: bench/results/pg.jsonl (raw records; previous file -> .prev), bench/results/pg-loadavg.log,
# bench/results/pg-summary.md (bench/pg_summarize.py). Data, repositories, servers: $WORK.
# Servers listen on unix sockets only (listen_addresses=''); every server started here is stopped on exit.
#
# Knobs: DB_MB=2000 DAYS=7 TPS_REPEATS=3 DURATION=60 RESTORE_REPEATS=2 BACKLOG_MB=1024 REPLAY_MB=1024
#        TPS_VARIANTS="noop coldkeep coldkeep-async pgbackrest-sync pgbackrest-async" (also: cp)
#        DRAIN_VARIANTS="cp coldkeep coldkeep-async pgbackrest-sync pgbackrest-async"
#        REPLAY_VARIANTS="cp coldkeep coldkeep-prefetch pgbackrest-sync pgbackrest-async" REPLAY_REPEATS=1
#          (coldkeep-prefetch is what `pg restore` writes: [postgres] restore_prefetch = 8; coldkeep is
#          restore_prefetch = 0, one segment per call)
#        REPLAY_SWITCHES=0 (timeline switches spread over the replayed WAL: the primary ends an archive
#          recovery and promotes, archiving a .history file and the old timeline's .partial segment)
#        BB_DAYS="0 DAYS-1" (days pg_basebackup -z runs; the others are interpolated in the summary; "all")
#        BACKUP_TOOLS="coldkeep pgbackrest pg_basebackup" RESTORE_TOOLS="coldkeep pgbackrest pg_basebackup"
#          (a subset skips the others, e.g. for a short coldkeep-vs-pgBackRest run; order still rotates)
#        PAGE_CHUNK= (bytes; setup creates the coldkeep repository with this page-chunk size)
#        RESTORE_WARMUP=1 (an untimed copy of the data directory before the first timed restore)
#        PREFETCH=8 SEGCOST_N=12 QUIET_WAIT=5 (seconds each timed step may wait for an idle machine)
#        WORK=/tmp/coldkeep-pgbench PORT=55440 STAGES="load setup days restore tps drain replay segcost"
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
WORK=${WORK:-/tmp/coldkeep-pgbench}
RESULTS_DIR=${RESULTS_DIR:-$BENCH/results}
RESULTS=$RESULTS_DIR/pg.jsonl
DB_MB=${DB_MB:-2000}
DAYS=${DAYS:-7}
TPS_REPEATS=${TPS_REPEATS:-3}
DURATION=${DURATION:-60}
RESTORE_REPEATS=${RESTORE_REPEATS:-2}
RESTORE_WARMUP=${RESTORE_WARMUP:-1}   # 1: copy the data directory once, untimed, before the timed restores
BACKLOG_MB=${BACKLOG_MB:-1024}
REPLAY_MB=${REPLAY_MB:-1024}
REPLAY_REPEATS=${REPLAY_REPEATS:-1}
REPLAY_SWITCHES=${REPLAY_SWITCHES:-0}   # timeline switches in the replayed WAL (each archives a .history and a .partial)
BB_DAYS=${BB_DAYS:-"0 $((DAYS - 1))"}   # days pg_basebackup -z runs (gzip is slow); "all" for every day
[ "$BB_DAYS" = all ] && BB_DAYS=$(seq -s " " 0 $((DAYS - 1)))
TPS_VARIANTS=${TPS_VARIANTS:-"noop coldkeep coldkeep-async pgbackrest-sync pgbackrest-async"}
DRAIN_VARIANTS=${DRAIN_VARIANTS:-"cp coldkeep coldkeep-async pgbackrest-sync pgbackrest-async"}
REPLAY_VARIANTS=${REPLAY_VARIANTS:-"cp coldkeep coldkeep-prefetch pgbackrest-sync pgbackrest-async"}
PREFETCH=${PREFETCH:-8}
SEGCOST_N=${SEGCOST_N:-12}
QUIET_WAIT=${QUIET_WAIT:-5}
STAGES=${STAGES:-"load setup days restore tps drain replay segcost"}
BACKUP_TOOLS=${BACKUP_TOOLS:-"coldkeep pgbackrest pg_basebackup"}
RESTORE_TOOLS=${RESTORE_TOOLS:-"coldkeep pgbackrest pg_basebackup"}
PORT=${PORT:-55440}
RPORT=$((PORT + 1))
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export LC_ALL=C.UTF-8 PATH="$PGBIN:$PATH"

[ "$(id -u)" = 0 ] || { echo "run as root (servers run as postgres through runuser)" >&2; exit 2; }
case $WORK in "$ROOT"/*) echo "WORK must be outside the git tree" >&2; exit 2 ;; esac
for tool in pgbackrest /usr/bin/time zstd; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y pgbackrest time zstd" >&2; exit 2; }
done

DATA=$WORK/pg/data
SOCK=$WORK/pg/sock
RSOCK=$WORK/restore/sock
DB=bench
DSN="host=$SOCK port=$PORT user=postgres dbname=$DB"
CKREPO=$WORK/ck-repo
CFG=$WORK/coldkeep.toml
CK=$WORK/runner/bin/coldkeep
PGBR_CONF=$WORK/pgbackrest.conf
STANZA=bench
PGBR_REPO=$WORK/pgbr-repo
BB=$WORK/basebackup
CPARCH=$WORK/cp-archive
LOGS=$WORK/logs
export COLDKEEP_CACHE_DIR=$WORK/ck-cache COLDKEEP_EXECUTABLE=$CK

UTIL=("$PY" "$BENCH/pg_util.py")
log() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
q() { psql -X -q -At -h "$SOCK" -p "$PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 -c "$1"; }
sqlq() { printf '%s' "$1" | sed "s/'/''/g"; }  # quote for a SQL literal
ready_count() { find "$DATA/pg_wal/archive_status" -name '*.ready' 2>/dev/null | wc -l; }
bytes_of() { "${UTIL[@]}" bytes "$@"; }
rec() { "${UTIL[@]}" record "$RESULTS" "$@"; }
extra() { "${UTIL[@]}" extra "$RESULTS" "$@"; }
# measure WORKLOAD TOOL STEP REP [measure.py options] -- command...
measure() {
  local w=$1 t=$2 s=$3 r=$4; shift 4
  "$PY" "$WORK/measure.py" --out "$RESULTS" --workload "$w" --tool "$t" --step "$s" --rep "$r" \
    --quiet-wait "$QUIET_WAIT" "$@"
}
stage() { log "stage: $1"; rec type=stage stage="$1" loadavg="\"$(cut -d' ' -f1-3 /proc/loadavg)\""; }

pg_stop() { # DATADIR: stop a server whose postmaster.pid is in DATADIR (ours only)
  if [ -f "$1/postmaster.pid" ]; then
    as_pg pg_ctl -D "$1" -m fast -w -t 120 stop >/dev/null 2>&1 || as_pg pg_ctl -D "$1" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}
SAMPLER=""
cleanup() {
  set +e
  for d in "$WORK"/restore/*/ "$WORK"/replay/data/; do [ -d "$d" ] && pg_stop "${d%/}"; done
  pg_stop "$DATA"
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set_archive_command() { # CMD: ALTER SYSTEM + reload
  q "ALTER SYSTEM SET archive_command = '$(sqlq "$1")'" >/dev/null
  q "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
}
set_conf() { q "ALTER SYSTEM SET $1 = '$2'" >/dev/null; q "SELECT pg_reload_conf()" >/dev/null; }
wait_drain() { # TIMEOUT_S -> prints seconds taken, or -1
  local t0; t0=$(date +%s.%N)
  while [ "$(ready_count)" -gt 0 ]; do
    if (( $(echo "$(date +%s.%N) - $t0 > $1" | bc | sed 's/^\./0./') )); then echo -1; return; fi
    sleep 0.1
  done
  echo "$(date +%s.%N) - $t0" | bc
}

PGBR="pgbackrest --config=$PGBR_CONF --stanza=$STANZA"
ck_push_cmd() { printf '%s --config %s pg wal-push %%p' "$CK" "$CFG"; }
archive_cmd_for() {
  case $1 in
    noop) echo "/bin/true" ;;
    paused) echo "" ;;
    cp) echo "cp %p $CPARCH/%f" ;;
    coldkeep) ck_push_cmd ;;
    coldkeep-async) printf '%s --config %s pg wal-push --async --workers 2 %%p' "$CK" "$CFG" ;;
    pgbackrest-sync) echo "$PGBR archive-push %p" ;;
    pgbackrest-async) echo "$PGBR --archive-async archive-push %p" ;;
    both) echo "$(ck_push_cmd) && $PGBR archive-push %p" ;;
    all3) echo "cp %p $CPARCH/%f && $(ck_push_cmd) && $PGBR archive-push %p" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
restore_cmd_for() {
  case $1 in
    cp) echo "cp $CPARCH/%f %p" ;;
    coldkeep) echo "$CK --config $CFG pg wal-fetch --lineage wal %f %p" ;;   # `pg restore` with restore_prefetch = 0
    coldkeep-prefetch) echo "$CK --config $CFG pg wal-fetch --lineage wal --prefetch $PREFETCH %f %p" ;;   # what `pg restore` writes
    pgbackrest-sync) echo "$PGBR archive-get %f \"%p\"" ;;
    pgbackrest-async) echo "$PGBR --archive-async --process-max=2 archive-get %f \"%p\"" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$WORK" "$RESULTS_DIR"
chmod 755 "$WORK"
START_WAIT=$WORK/start_wait.sh
cat >"$START_WAIT" <<EOF
#!/usr/bin/env bash
# start_wait.sh DATADIR: start it as postgres on $RSOCK:$RPORT without archiving; wait for promotion
set -euo pipefail
d=\$1
runuser -u postgres -- $PGBIN/pg_ctl -D "\$d" -l "\$d.log" -w -t 3600 \\
  -o "-p $RPORT -k $RSOCK -c archive_mode=off -c listen_addresses=''" start >/dev/null
until [ "\$($PGBIN/psql -X -At -h $RSOCK -p $RPORT -U postgres -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  sleep 0.05
done
EOF
chmod 755 "$START_WAIT"

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

# ================================================================================================
if has_stage load; then
  # a fresh run: wipe everything
  cleanup; trap cleanup EXIT
  find "$WORK" -mindepth 1 -maxdepth 1 ! -name start_wait.sh -exec rm -rf {} +
  [ -f "$RESULTS" ] && mv "$RESULTS" "$RESULTS.prev"
  : >"$RESULTS_DIR/pg-loadavg.log"
fi
mkdir -p "$LOGS" "$WORK/pg" "$SOCK" "$RSOCK" "$BB" "$CPARCH" "$WORK/restore" "$WORK/replay" "$COLDKEEP_CACHE_DIR"
chown postgres:postgres "$WORK/pg" "$SOCK" "$RSOCK" "$BB" "$CPARCH" "$WORK/replay" "$WORK/restore"
chmod 755 "$WORK/restore"
cp "$BENCH/measure.py" "$WORK/measure.py"     # a snapshot: bench/measure.py is shared with other benchmarks

( while :; do echo "$(date +%s) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 5; done ) >>"$RESULTS_DIR/pg-loadavg.log" &
SAMPLER=$!
# every run (also a partial rerun with STAGES=...) measures the code of this checkout
log "coldkeep runner for the postgres OS user (snapshot of src/coldkeep)"
"${UTIL[@]}" runner "$WORK/runner" "$ROOT/src" "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
as_pg "$CK" --version >/dev/null

if ! has_stage load && [ -f "$DATA/PG_VERSION" ] && [ ! -f "$DATA/postmaster.pid" ]; then
  as_pg pg_ctl -D "$DATA" -l "$WORK/pg/server.log" -w -t 300 start >/dev/null   # a partial rerun (STAGES=...)
fi

if has_stage load; then
  stage load
  rec type=env key=versions \
    postgres="\"$($PGBIN/postgres --version)\"" pgbackrest="\"$(pgbackrest version)\"" \
    coldkeep="\"$("$CK" --version) (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'))\"" \
    runner_python="\"$("$WORK/runner/bin/python" --version 2>&1)\"" zstd="\"$(zstd --version | tr -d '*' | sed 's/^ *//; s/ *$//')\"" \
    kernel="\"$(uname -r)\"" cpus="$(nproc)" mem_gib="$(free -g | awk '/Mem/{print $2}')" \
    cpu_model="\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')\"" \
    os="\"$(. /etc/os-release; echo "$PRETTY_NAME")\"" \
    knobs="\"DB_MB=$DB_MB DAYS=$DAYS BB_DAYS=$BB_DAYS TPS_REPEATS=$TPS_REPEATS DURATION=$DURATION RESTORE_REPEATS=$RESTORE_REPEATS BACKLOG_MB=$BACKLOG_MB REPLAY_MB=$REPLAY_MB\""

  log "initdb + load (~$DB_MB MB: 25 % pgbench, 75 % conversations)"
  as_pg initdb -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --data-checksums >/dev/null
  cat >>"$DATA/postgresql.conf" <<EOF
# --- bench_pg.sh ---
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
shared_buffers = 512MB
max_wal_size = 4GB
wal_level = replica
max_wal_senders = 10
archive_mode = on
archive_command = '/bin/true'
log_checkpoints = on
EOF
  as_pg pg_ctl -D "$DATA" -l "$WORK/pg/server.log" -w -t 300 start >/dev/null
  psql -X -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
  SCALE=${PGBENCH_SCALE:-$(( (DB_MB * 25 / 100 + 7) / 15 ))}
  [ "$SCALE" -ge 1 ] || SCALE=1
  measure pg "pgbench -i" load 1 -- pgbench -i -s "$SCALE" -q -h "$SOCK" -p "$PORT" -U postgres "$DB"
  PGB_BYTES=$(q "SELECT sum(pg_total_relation_size(oid)) FROM pg_class WHERE relname LIKE 'pgbench_%' AND relkind = 'r'")
  CONV_MB=$(( DB_MB - PGB_BYTES / 1000000 ))
  measure pg "pg_load.py (conversations)" load 1 --stdout "$LOGS/load.json" -- \
    "$PY" "$BENCH/pg_load.py" load "$DSN" --mb "$CONV_MB"
  q "CHECKPOINT" >/dev/null
  CONV_HEAP=$(q "SELECT pg_relation_size('conversations')")
  CONV_FILE=$DATA/$(q "SELECT pg_relation_filepath('conversations')")
  ZST=$(cat "$CONV_FILE" $(ls "$CONV_FILE".[0-9]* 2>/dev/null) | zstd -3 -T1 -c | wc -c)
  rec type=db scale="$SCALE" pgbench_bytes="$PGB_BYTES" load="$(cat "$LOGS/load.json")" \
    database_bytes="$(q "SELECT pg_database_size('$DB')")" \
    data_dir_bytes="$(( $(bytes_of "$DATA") - $(bytes_of "$DATA/pg_wal") ))" \
    conversations_heap_bytes="$CONV_HEAP" conversations_heap_zstd3_bytes="$ZST" \
    avg_content_bytes="$(q "SELECT avg(octet_length(content))::int FROM conversations")"
fi

if has_stage setup; then
  stage setup
  install -d -o postgres -g postgres -m 700 "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool" "$PGBR_REPO"
  cat >"$CFG" <<EOF
[repository]
url = "file://$CKREPO"
owner = "postgres"
compression_level = 3

[postgres]
dsn = "host=$SOCK port=$PORT dbname=$DB user=postgres"
data_dir = "$DATA"
bin_dir = "$PGBIN"
os_user = "postgres"
count_tables = ["conversations"]
EOF
  chmod 644 "$CFG"
  cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$PGBR_REPO
repo1-retention-full=10
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-level-console=warn
log-level-file=info

[$STANZA]
pg1-path=$DATA
pg1-socket-path=$SOCK
pg1-port=$PORT
pg1-user=postgres
EOF
  chown postgres:postgres "$PGBR_CONF"
  if [ -n "${PAGE_CHUNK:-}" ]; then   # a repository with another page-chunk size (bytes; `repo init` has no option)
    "$WORK/runner/bin/python" -c "
from coldkeep.repository.chunker import ChunkerParams
from coldkeep.repository.repository import Repository
from coldkeep.storage.local import LocalBackend
Repository.init(LocalBackend('$CKREPO'), chunker=ChunkerParams(page_chunk=$PAGE_CHUNK))"
    chown -R postgres:postgres "$CKREPO"
  else
    "$CK" --config "$CFG" -q repo init
  fi
  "$CK" --config "$CFG" pg setup --apply --coldkeep-path "$CK" | tee "$LOGS/pg-setup.txt" >&2
  # what `pg setup` writes by default ([postgres] archive_async = true); the stages then set their own
  [ "$(q "SHOW archive_command")" = "$(printf '%s --config %s pg wal-push --async %%p' "$CK" "$CFG")" ] ||
    { echo "unexpected archive_command from pg setup: $(q "SHOW archive_command")" >&2; exit 1; }
  as_pg $PGBR stanza-create >/dev/null
  set_archive_command "$(archive_cmd_for both)"
  "$CK" --config "$CFG" pg check
  as_pg $PGBR check
fi

# ================================================================================================
if has_stage days; then
  stage days
  read -r -a TOOLS <<<"$BACKUP_TOOLS"
  NT=${#TOOLS[@]}
  for day in $(seq 0 $((DAYS - 1))); do
    if [ "$day" -gt 0 ]; then
      log "day $day: insert 2 % new rows, update 0.2 % at random"
      measure pg "pg_load.py day" "day change" "$day" --stdout "$LOGS/day$day.json" -- \
        "$PY" "$BENCH/pg_load.py" day "$DSN" --day "$day"
      extra change="$(cat "$LOGS/day$day.json")"
    fi
    rows=$(q "SELECT count(*) FROM conversations")
    echo "$rows" >"$WORK/rows-last"
    kind=$( [ "$day" = 0 ] && echo full || echo incr )
    for i in $(seq 0 $((NT - 1))); do
      tool=${TOOLS[$(( (i + day) % NT ))]}
      log "day $day: $tool backup"
      case $tool in
        coldkeep)
          measure backup coldkeep "$kind" "$day" --json-stdout --stored "$CKREPO" -- \
            "$CK" --config "$CFG" --json pg backup --label "day$day"
          extra day="$day" rows="$rows" repo="$("${UTIL[@]}" ckrepo "$CKREPO")" ;;
        pgbackrest)
          measure backup pgbackrest "$kind" "$day" --stored "$PGBR_REPO" -- \
            runuser -u postgres -- $PGBR --type="$kind" backup
          extra day="$day" rows="$rows" \
            repo="{\"total\": $(bytes_of "$PGBR_REPO"), \"wal\": $(bytes_of "$PGBR_REPO/archive"), \"backup\": $(bytes_of "$PGBR_REPO/backup")}" ;;
        pg_basebackup)
          [[ " $BB_DAYS " == *" $day "* ]] || continue
          install -d -o postgres -g postgres "$BB/day$day"
          measure backup pg_basebackup full "$day" --stored "$BB" -- \
            runuser -u postgres -- pg_basebackup -h "$SOCK" -p "$PORT" -U postgres -D "$BB/day$day" -Ft -z -X stream -c fast
          wal=$(find "$BB" -name 'pg_wal.tar*' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
          total=$(bytes_of "$BB")
          extra day="$day" rows="$rows" repo="{\"total\": $total, \"wal\": $wal, \"backup\": $((total - wal))}" ;;
      esac
    done
  done
  "$CK" --config "$CFG" --json repo stats >"$LOGS/ck-repo-stats.json"
  rec type=repo_stats tool=coldkeep stats="$(cat "$LOGS/ck-repo-stats.json")"
  as_pg $PGBR --output=json info >"$LOGS/pgbr-info.json"
  rec type=repo_stats tool=pgbackrest info="$(cat "$LOGS/pgbr-info.json")"
fi

# ================================================================================================
check_rows() { # SOCKDIR PORT: the restored server must have the rows of the last backup
  local got want
  got=$(psql -X -At -h "$1" -p "$2" -U postgres -d "$DB" -c "SELECT count(*) FROM conversations")
  want=$(cat "$WORK/rows-last")
  extra rows_restored="$got" rows_expected="$want"
  [ "$got" = "$want" ] || { echo "RESTORE CHECK FAILED: $got rows, expected $want" >&2; exit 1; }
}
if has_stage restore; then
  stage restore
  R=$WORK/restore
  LASTBB=$(ls -d "$BB"/day* 2>/dev/null | sort -V | tail -1 || true)
  read -r -a TOOLS <<<"$RESTORE_TOOLS"
  NT=${#TOOLS[@]}
  if [ "$RESTORE_WARMUP" = 1 ]; then
    # Untimed: the run's first restore would pay the VM's first touch of fresh page-cache memory
    # (7-13 s instead of 4-6 s in earlier runs), and the first tool in the rotation is always the same.
    log "restore warm-up (untimed, not recorded): a plain copy of the data directory"
    rm -rf "$R/data"
    cp -a "$DATA" "$R/data" && sync && rm -rf "$R/data"
  fi
  for rep in $(seq 1 "$RESTORE_REPEATS"); do
    for i in $(seq 0 $((NT - 1))); do
      tool=${TOOLS[$(( (i + rep - 1) % NT ))]}
      log "restore rep $rep: $tool"
      rm -rf "$R/data" "$R/data.run" "$R/data.config" "$R/data.log"
      case $tool in
        coldkeep)
          measure restore coldkeep "restore to running server" "$rep" --json-stdout -- \
            "$CK" --config "$CFG" --json pg restore --target-dir "$R/data" --immediate --start
          check_rows "$("${UTIL[@]}" get "$RESULTS" output.socket_dir)" "$("${UTIL[@]}" get "$RESULTS" output.port)" ;;
        pgbackrest)
          install -d -m 700 -o postgres -g postgres "$R/data"
          measure restore pgbackrest "restore to running server" "$rep" --json-stdout -- bash -c "
            set -e; t0=\$(date +%s.%N)
            runuser -u postgres -- $PGBR --pg1-path=$R/data --process-max=2 --type=immediate --target-action=promote restore >&2
            t1=\$(date +%s.%N); $START_WAIT $R/data >&2; t2=\$(date +%s.%N)
            echo \"{\\\"files_s\\\": \$(echo \"\$t1 - \$t0\" | bc | sed 's/^\./0./'), \\\"replay_s\\\": \$(echo \"\$t2 - \$t1\" | bc | sed 's/^\./0./')}\""
          check_rows "$RSOCK" "$RPORT" ;;
        pg_basebackup)
          install -d -m 700 -o postgres -g postgres "$R/data"
          measure restore pg_basebackup "restore to running server" "$rep" --json-stdout -- bash -c "
            set -e; t0=\$(date +%s.%N)
            runuser -u postgres -- tar -xzf $LASTBB/base.tar.gz -C $R/data
            runuser -u postgres -- tar -xzf $LASTBB/pg_wal.tar.gz -C $R/data/pg_wal
            t1=\$(date +%s.%N); $START_WAIT $R/data >&2; t2=\$(date +%s.%N)
            echo \"{\\\"files_s\\\": \$(echo \"\$t1 - \$t0\" | bc | sed 's/^\./0./'), \\\"replay_s\\\": \$(echo \"\$t2 - \$t1\" | bc | sed 's/^\./0./')}\""
          check_rows "$RSOCK" "$RPORT" ;;
      esac
      pg_stop "$R/data"
    done
  done
  rm -rf "$R/data" "$R/data.run" "$R/data.config"
fi

# ================================================================================================
if has_stage tps; then
  stage tps
  set_conf max_wal_size 64MB
  set_conf min_wal_size 32MB
  read -r -a VARS <<<"$TPS_VARIANTS"
  nv=${#VARS[@]}
  for rep in $(seq 1 "$TPS_REPEATS"); do
    for i in $(seq 0 $((nv - 1))); do
      v=${VARS[$(( (i + rep - 1) % nv ))]}
      log "tps round $rep: $v"
      wait_drain 600 >/dev/null
      [ "$v" = cp ] && find "$CPARCH" -mindepth 1 -delete
      set_archive_command "$(archive_cmd_for "$v")"
      q "CHECKPOINT" >/dev/null
      q "SELECT pg_stat_reset_shared('archiver')" >/dev/null
      lsn0=$(q "SELECT pg_current_wal_lsn()")
      out=$LOGS/pgbench-$v-$rep.out
      measure tps "$v" "pgbench -c4 -j2 -T$DURATION" "$rep" --stdout "$out" -- \
        pgbench -c 4 -j 2 -T "$DURATION" -h "$SOCK" -p "$PORT" -U postgres "$DB"
      ready=$(ready_count)   # right at the end of the load
      IFS='|' read -r archived failed <<<"$(q "SELECT archived_count, failed_count FROM pg_stat_archiver")"
      lsn1=$(q "SELECT pg_current_wal_lsn()")
      walb=$(q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
      drain=$(wait_drain 600)
      IFS='|' read -r archived2 failed2 <<<"$(q "SELECT archived_count, failed_count FROM pg_stat_archiver")"
      tps=$("${UTIL[@]}" tps "$out")
      extra tps="$tps" ready_at_end="$ready" archived_at_end="$archived" failed_at_end="$failed" \
        wal_bytes="$walb" segs_generated="$((walb / 16777216))" drain_s="$drain" \
        archived_after_drain="$archived2" failed_after_drain="$failed2" \
        archive_command="\"$(archive_cmd_for "$v" | sed "s#$WORK#\$WORK#g")\""
      echo "  $v: tps=$tps wal=$((walb / 1000000))MB archived=$archived failed=$failed ready_at_end=$ready drain=${drain}s" >&2
    done
  done
  set_archive_command "$(archive_cmd_for noop)"
fi

# ================================================================================================
archive_bytes() { # VARIANT -> bytes in that tool's WAL archive
  case $1 in
    cp) bytes_of "$CPARCH" ;;
    coldkeep*) bytes_of "$CKREPO/named" ;;
    pgbackrest*) bytes_of "$PGBR_REPO/archive" ;;
  esac
}
if has_stage drain; then
  stage drain
  set_conf max_wal_size 64MB
  for v in $DRAIN_VARIANTS; do
    log "drain: $BACKLOG_MB MB of WAL with archiving paused, then $v"
    set_archive_command "$(archive_cmd_for noop)"
    wait_drain 600 >/dev/null
    find "$CPARCH" -mindepth 1 -delete
    set_archive_command ""          # archiving paused: .ready files pile up
    q "DROP TABLE IF EXISTS walgen" >/dev/null
    lsn0=$(q "SELECT pg_current_wal_lsn()")
    q "CREATE TABLE walgen AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t FROM generate_series(1, $((BACKLOG_MB * 1000000 / 150))) g" >/dev/null
    q "SELECT pg_switch_wal()" >/dev/null
    lsn1=$(q "SELECT pg_current_wal_lsn()")
    n=$(ready_count)
    size0=$(archive_bytes "$v")
    q "ALTER SYSTEM SET archive_command = '$(sqlq "$(archive_cmd_for "$v")")'" >/dev/null
    q "SELECT pg_stat_reset_shared('archiver')" >/dev/null
    measure drain "$v" "drain backlog" 1 -- bash -c "
      psql -X -q -At -h $SOCK -p $PORT -U postgres -d $DB -c 'SELECT pg_reload_conf()' >/dev/null
      while find $DATA/pg_wal/archive_status -name '*.ready' | grep -q .; do sleep 0.05; done"
    IFS='|' read -r archived failed <<<"$(q "SELECT archived_count, failed_count FROM pg_stat_archiver")"
    size1=$(archive_bytes "$v")
    wall=$("${UTIL[@]}" get "$RESULTS" wall_s)
    extra backlog_segs="$n" wal_bytes="$(q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")" \
      archived="$archived" failed="$failed" stored_bytes_added="$((size1 - size0))" \
      segs_per_s="$(echo "scale=2; $n / $wall" | bc | sed 's/^\./0./')" \
      archive_command="\"$(archive_cmd_for "$v" | sed "s#$WORK#\$WORK#g")\""
    echo "  $v: $n segments in ${wall}s, $archived archived, $failed failed, stored +$((size1 - size0)) B" >&2
    q "DROP TABLE walgen" >/dev/null
  done
  set_archive_command "$(archive_cmd_for noop)"
fi

# ================================================================================================
if has_stage replay; then
  stage replay
  RP=$WORK/replay
  log "replay: base backup (-X none) + ~$REPLAY_MB MB of pgbench WAL archived by every tool"
  wait_drain 600 >/dev/null
  find "$CPARCH" -mindepth 1 -delete
  set_archive_command "$(archive_cmd_for all3)"
  rm -rf "$RP/base"
  as_pg pg_basebackup -h "$SOCK" -p "$PORT" -U postgres -D "$RP/base" -Fp -X none -c fast --no-sync
  lsn0=$(q "SELECT pg_current_wal_lsn()")
  walb=0
  # the same WAL records, written ~5x faster: a commit no longer waits for its WAL flush (this VM's
  # fsync held pgbench at ~2 MB/s of WAL, 8 min per GB)
  set_conf synchronous_commit off
  for part in $(seq 0 "$REPLAY_SWITCHES"); do
    if [ "$part" -gt 0 ]; then   # a timeline switch: the primary ends an archive recovery of its own
      # WAL (restore_command fails: pg_wal is read) and promotes; it archives the new timeline's
      # history file and the old timeline's last segment as .partial (recovery skips both halves)
      lsnb=$(q "SELECT pg_current_wal_lsn()")
      walb=$((walb + $(q "SELECT pg_wal_lsn_diff('$lsnb', '$lsn0')::bigint")))
      pg_stop "$DATA"
      printf "restore_command = '/bin/false'\n" >>"$DATA/postgresql.auto.conf"
      as_pg touch "$DATA/recovery.signal"
      as_pg pg_ctl -D "$DATA" -l "$WORK/pg/server.log" -w -t 300 start >/dev/null
      until [ "$(q "SELECT pg_is_in_recovery()")" = f ]; do sleep 0.1; done
      q "ALTER SYSTEM RESET restore_command" >/dev/null
      lsn0=$(q "SELECT pg_current_wal_lsn()")
      log "replay: switched to timeline $(q "SELECT timeline_id FROM pg_control_checkpoint()") at $lsn0"
    fi
    pgbench -c 4 -j 2 -T 1800 -h "$SOCK" -p "$PORT" -U postgres "$DB" >"$LOGS/replay-pgbench.out" 2>&1 &
    PGB=$!
    while [ "$(q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")" -lt $((REPLAY_MB * 1000000 / (REPLAY_SWITCHES + 1))) ]; do
      kill -0 "$PGB" 2>/dev/null || { echo "pgbench stopped early" >&2; exit 1; }
      sleep 0.5
    done
    kill -TERM "$PGB"; wait "$PGB" || true   # (SIGINT is ignored by background jobs of a script)
  done
  set_conf synchronous_commit on
  q "SELECT pg_switch_wal()" >/dev/null
  lsn1=$(q "SELECT pg_current_wal_lsn()")
  walb=$((walb + $(q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")))
  drained=$(wait_drain 1800)
  set_archive_command "$(archive_cmd_for noop)"
  nseg=$(find "$CPARCH" -name '????????????????????????' | wc -l)
  npartial=$(find "$CPARCH" -name '*.partial' | wc -l)
  nhist=$(find "$CPARCH" -name '*.history' | wc -l)
  rec type=replay_wal wal_bytes="$walb" segments_archived="$nseg" archive_drain_s="$drained" \
    timeline_switches="$REPLAY_SWITCHES" partial_archived="$npartial" history_archived="$nhist"
  read -r -a RVARS <<<"$REPLAY_VARIANTS"
  nrv=${#RVARS[@]}
  for rep in $(seq 1 "$REPLAY_REPEATS"); do
  for i in $(seq 0 $((nrv - 1))); do
    v=${RVARS[$(( (i + rep - 1) % nrv ))]}   # the order rotates each round
    log "replay round $rep through $v"
    rm -rf "$RP/data" "$RP/data.log"
    cp -a "$RP/base" "$RP/data"
    find "$WORK/pgbr-spool" -path '*/in/*' -type f -delete 2>/dev/null || true
    cmd=$(restore_cmd_for "$v")
    [[ $v == pgbackrest* ]] && cmd=${cmd/archive-get/--pg1-path=$RP/data archive-get}
    if [ "$v" = coldkeep-prefetch ]; then   # behind the ready segment's shell fast path, as `pg restore` writes it
      cmd="$("$PY" -c 'import sys; from coldkeep.postgres.prefetch import ready_fast_path as f; print(f(*sys.argv[1:]), end="")' "$RP/data" "$CFG" wal)$cmd"
    fi
    printf "restore_command = '%s'\n" "$(sqlq "$cmd")" >>"$RP/data/postgresql.auto.conf"
    touch "$RP/data/recovery.signal"
    chown -R postgres:postgres "$RP/data"
    measure replay "$v" "replay to promoted" "$rep" -- "$START_WAIT" "$RP/data"
    restored=$(grep -c 'restored log file "[0-9A-F]\{24\}"' "$RP/data.log" || true)
    extra wal_bytes="$walb" segments_restored="$restored" \
      restore_command="\"$(printf '%s' "$cmd" | sed "s#$WORK#\$WORK#g; s#\"#'#g")\""
    echo "  $v: $restored segments restored in $("${UTIL[@]}" get "$RESULTS" wall_s)s" >&2
    pg_stop "$RP/data"
  done
  done
  rm -rf "$RP/data"
fi

# ================================================================================================
if has_stage segcost; then
  stage segcost
  S=$WORK/segcost
  rm -rf "$S"; install -d -o postgres -g postgres -m 755 "$S" "$S/pgbr-repo"
  sed "s#url = \"file://$CKREPO\"#url = \"file://$S/ck-repo\"#" "$CFG" >"$S/coldkeep.toml"
  chmod 644 "$S/coldkeep.toml"
  "$CK" --config "$S/coldkeep.toml" -q repo init
  SYSID=$(q "SELECT system_identifier FROM pg_control_system()")
  "$WORK/runner/bin/python" -c "
from coldkeep.lean.config import load_repository_section
from coldkeep.postgres import archive
from coldkeep.repository.setup import open_repository_section
with open_repository_section(load_repository_section('$S/coldkeep.toml')) as repo:
    archive.record_system_identifier(repo, $SYSID)"
  sed "s#^repo1-path=.*#repo1-path=$S/pgbr-repo#; s#^\[$STANZA\]#[segcost]#" "$PGBR_CONF" >"$S/pgbackrest.conf"
  chown postgres:postgres "$S/pgbackrest.conf"
  as_pg pgbackrest --config="$S/pgbackrest.conf" --stanza=segcost stanza-create >/dev/null
  "${UTIL[@]}" segcost "$RESULTS" "$CPARCH" "$CK" "$S/coldkeep.toml" "$S/pgbackrest.conf" segcost "$SEGCOST_N"
fi

stage end
log "done; summary: $RESULTS_DIR/pg-summary.md"
"$PY" "$BENCH/pg_summarize.py" "$RESULTS" --loadavg "$RESULTS_DIR/pg-loadavg.log" | tee "$RESULTS_DIR/pg-summary.md"
