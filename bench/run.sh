#!/usr/bin/env bash
# Every benchmark in one run on this machine (README: `make bench`):
#   1. traffic switch under constant load, ours against the usual recipes
#   2. backups of a ~100 MB database against `pg_dump | gzip`
# Figures go to stdout and bench/out/*.json; bench/RESULTS.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p bench/out
bash scripts/engine.sh
bash scripts/demo-images.sh
echo "== $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB"
python bench/switch_bench.py --rate "${BENCH_RATE:-200}" --seconds "${BENCH_SECONDS:-60}" --json bench/out/switch.json
python bench/pg_backup_bench.py
