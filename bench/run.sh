#!/usr/bin/env bash
# Every benchmark in one run on this machine (README: `make bench`):
#   1. traffic switch under constant load, ours against the usual recipes
#   2. backups of a ~200 MB database against `pg_dump | gzip`; pgBackRest,
#      WAL archiving and restic against the verified dump (dr_bench.py)
#   3. deploy.yml, rollback.yml and a site.yml re-run on the warm local
#      server (made and warmed by scripts/demo.sh, as `make demo` does)
#   4. bad releases (5xx, slow) at 50 requests/s on the same server: how
#      long until traffic is back on the good one
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
python bench/dr_bench.py
bash scripts/demo.sh > bench/out/demo.log 2>&1 || { tail -40 bench/out/demo.log; exit 1; }
python bench/playbook_bench.py --rounds "${BENCH_ROUNDS:-3}" --json bench/out/playbooks.json
python bench/verify_bench.py --rounds "${BENCH_ROUNDS:-3}" -e '{"app_smoke_checks": []}' --json bench/out/verify.json
