#!/usr/bin/env bash
# Conversation archive benchmark: coldkeep vs the spec's script vs a COPY/UPDATE floor, in one run.
# Usage: bench/bench_conversations.sh [--rows 1000000] [--repeats 1] [--json FILE] ...  (as root or a
# user that can run PostgreSQL; needs GNU time and zstd).  Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install -y time)" >&2; exit 2; }
command -v zstd >/dev/null || { echo "needs zstd (apt-get install -y zstd)" >&2; exit 2; }
exec .venv/bin/python bench/bench_conversations.py "$@"
