#!/usr/bin/env bash
# All benchmarks of docs/benchmarks.md, one command (`make bench` runs this):
#   1. bench_repository.sh  coldkeep vs restic / borg / tar | zstd on checkpoints and a dataset tree
#   2. bench_chunker.py     chunker + hash micro-benchmark (skip with CHUNKER=0)
# Results go to bench/results/ (git-ignored); data, repositories and caches to $WORK
# (default /tmp/coldkeep-bench). Knobs: see the header of bench_repository.sh.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
mkdir -p "$BENCH/results"
bash "$BENCH/bench_repository.sh"
if [ "${CHUNKER:-1}" = 1 ]; then
  "${PY:-$ROOT/.venv/bin/python}" "$BENCH/bench_chunker.py" --json "$BENCH/results/chunker.json"
fi
