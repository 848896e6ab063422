#!/usr/bin/env bash
# The one test command (README: `make test`; CI: .ci/run). On a fresh
# machine it installs and starts what it needs, then runs every stage:
#   setup     venv, Docker engine, host packages, local images
#   lint      yamllint, ansible-lint (production profile), ruff
#   sanity    ansible-test sanity on the collection
#   pytest    module tests against real HAProxy and PostgreSQL
#   molecule  every Molecule scenario (real systemd containers), and beside
#             them the install test (scripts/install-test.sh; stage install alone)
# Usage: scripts/test.sh [stage ...]   (default: all of them, in order)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.ansible/collections"
export PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 NO_COLOR=1
SANITY_PYTHON=${SANITY_PYTHON:-3.11}

HOST_PACKAGES=(docker.io debootstrap haproxy postgresql busybox-static openssh-client rsync prometheus prometheus-alertmanager zstd lz4 shellcheck prometheus-blackbox-exporter restic pgbackrest
  openssh-server rclone)

stage_setup() {
  local missing=()
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "installing host packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || return 1
    # Only their programs are wanted here (promtool, amtool; sshd and rclone
    # for the append-only storage the off-site tests start), not the services.
    systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter prometheus-blackbox-exporter ssh >/dev/null 2>&1 || true
  fi
  make -s venv || return 1
  bash scripts/engine.sh || return 1
  bash scripts/images.sh all || return 1
  # Built once here, not by the first of the scenarios that ask at once.
  bash scripts/demo-images.sh || return 1
}

stage_lint() {
  local rc=0
  # With both stages asked for, sanity runs beside lint (each mostly one
  # core busy; about 25 s saved); stage_sanity then waits for it.
  if [[ " ${STAGES[*]} " == *" sanity "* ]]; then
    SANITY_LOG=$(mktemp)
    (run_sanity >"$SANITY_LOG" 2>&1) &
    SANITY_PID=$!
  fi
  yamllint -s . || rc=1
  ansible-lint --profile production || rc=1
  ruff check . || rc=1
  ruff format --check . || rc=1
  # Every workflow, ours and the examples users copy (shellcheck on each run:).
  actionlint -no-color .github/workflows/*.yml examples/ci/github/workflows/*.yml || rc=1
  check-jsonschema --builtin-schema vendor.gitlab-ci examples/ci/gitlab/.gitlab-ci.yml || rc=1
  return $rc
}

stage_sanity() {
  if [[ -n ${SANITY_PID:-} ]]; then
    local rc=0
    wait "$SANITY_PID" || rc=1
    cat "$SANITY_LOG"
    rm -f "$SANITY_LOG"
    SANITY_PID=
    return $rc
  fi
  run_sanity
}

run_sanity() {
  local pipv tmp coll
  pipv=$(python - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
class P: version = "3.11"
print(get_venv_packages(P)["pip"].replace(".", "_"))
PY
) || return 1
  mkdir -p ~/.ansible/test/cache
  cp scripts/get_pip_standin.py ~/.ansible/test/cache/"get_pip_${pipv}.py"
  # ansible-test wants the collection at ansible_collections/NS/NAME inside
  # a git repository: test a copy of the working tree.
  tmp=$(mktemp -d)
  coll="$tmp/ansible_collections/onebox/platform"
  mkdir -p "$coll"
  rsync -a --exclude .venv --exclude .ansible --exclude .cache --exclude .git --exclude tests/output ./ "$coll/"
  (cd "$coll" && git init -q && git add -A && git -c user.email=ci@localhost -c user.name=ci commit -qm sanity) || return 1
  (cd "$coll" && ansible-test sanity --local --python "$SANITY_PYTHON" --color no)
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

stage_pytest() {
  # With the molecule stage asked for too, its first group starts now and
  # runs beside pytest (several minutes saved on 2 cores; neither has load
  # tests with latency gates); stage_molecule goes on from there.
  if [[ " ${STAGES[*]} " == *" molecule "* ]]; then
    start_early_group
  fi
  # Every tool the tests look for is installed by setup: a skip fails.
  ONEBOX_NO_SKIP=1 python -m pytest tests -p no:cacheprovider -ra --durations=15
}

# The built collection installed as users install it, with the oldest and
# the newest ansible-core of meta/runtime.yml, against its own local server
# (scripts/install-test.sh). Runs inside the molecule stage, beside the
# scenarios without load tests; `scripts/test.sh install` runs it alone.
stage_install() {
  bash scripts/install-test.sh
}

# Molecule's output with the seconds since T0 before each of its step lines
# ("[deploy > converge] Executing"): where a scenario's time goes.
step_times() {
  local t0=$1 line
  while IFS= read -r line; do
    case $line in
      *"] Execut"*) printf '[%5ds] %s\n' "$((SECONDS - t0))" "$line" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
}

# One scenario (or "install"), its output to LOG; prints its time.
molecule_one() {
  local s=$1 t0=$SECONDS rc=0
  if [[ $s == install ]]; then
    stage_install || rc=1
  else
    molecule test -s "$s" 2>&1 | step_times "$t0"
    ((PIPESTATUS[0] == 0)) || { rc=1; molecule destroy -s "$s" >/dev/null 2>&1; }
  fi
  echo "--- scenario $s: $((SECONDS - t0))s ($( ((rc)) && echo FAILED || echo passed))"
  return $rc
}

# Scheduling on 2 cores (make test must stay under 45 minutes; it took 53
# on 2026-12-08, platform the longest at 2,904 s; bench/RESULTS.md):
#   1. platform (the longest: start it first), backup (it kills a server and
#      recovers it onto another, then one live), bootstrap and the install
#      test side by side, started with the pytest stage when both are asked
#      for; platform's load tests come after its converge, when pytest is
#      done;
#   2. deploy as soon as the first of bootstrap and the install test is
#      done, beside the others. The verification gates judge a release
#      against the one before it in the same window (p95 over 2x the
#      previous one's and over it + 100 ms, errors with 95 % confidence),
#      so a busy machine slows both alike; the tests count failed
#      requests, not seconds.
EARLY_SCENARIOS=(platform backup bootstrap install)
LATE_PARALLEL=(deploy)

# Start scenario S in the background, output to the log directory.
launch() {
  local s=$1
  [[ -f molecule/$s/molecule.yml || $s == install ]] || return 0
  echo "--- molecule test -s $s (in parallel, output below when it ends)"
  molecule_one "$s" >"$LOGDIR/$s.log" 2>&1 &
  PIDS[$s]=$!
}

# Wait for scenario S (unless wait_first already did) and show its output.
collect() {
  local s=$1 rc=0
  [[ -n ${PIDS[$s]:-} ]] || return 0
  if [[ -n ${ENDED[$s]:-} ]]; then
    rc=${ENDED[$s]}
  else
    wait "${PIDS[$s]}" || rc=1
  fi
  echo "=== output of scenario $s"
  cat "$LOGDIR/$s.log"
  unset "PIDS[$s]" "ENDED[$s]"
  return "$rc"
}

# Wait until the first of the scenarios named ends; remember how it went.
wait_first() {
  local s pid rc=0
  local -a pids=()
  for s in "$@"; do [[ -n ${PIDS[$s]:-} ]] && pids+=("${PIDS[$s]}"); done
  ((${#pids[@]})) || return 0
  wait -n -p pid "${pids[@]}" || rc=1
  for s in "$@"; do [[ ${PIDS[$s]:-} == "$pid" ]] && ENDED[$s]=$rc; done
  return 0
}

start_early_group() {
  declare -gA PIDS=() ENDED=()
  LOGDIR=$(mktemp -d)
  EARLY_T0=$SECONDS
  local s
  for s in "${EARLY_SCENARIOS[@]}"; do launch "$s"; done
}

stage_molecule() {
  local rc=0 s
  [[ -n ${LOGDIR:-} ]] || start_early_group
  local t0=$EARLY_T0
  # Each late scenario starts as soon as one of bootstrap and the install
  # test is done (the next one when the second is).
  local late
  local -a running
  for late in "${LATE_PARALLEL[@]}"; do
    running=()
    for s in bootstrap install; do
      [[ -n ${PIDS[$s]:-} && -z ${ENDED[$s]:-} ]] && running+=("$s")
    done
    wait_first "${running[@]}"
    launch "$late"
  done
  for s in "${EARLY_SCENARIOS[@]}" "${LATE_PARALLEL[@]}"; do
    collect "$s" || rc=1
  done
  echo "--- parallel scenarios (${EARLY_SCENARIOS[*]} ${LATE_PARALLEL[*]}): $((SECONDS - t0))s"
  rm -rf "$LOGDIR"
  # Any other scenario, one after another.
  for s in molecule/*/molecule.yml; do
    s=$(basename "$(dirname "$s")")
    [[ " ${EARLY_SCENARIOS[*]} ${LATE_PARALLEL[*]} " == *" $s "* ]] && continue
    echo "--- molecule test -s $s"
    molecule_one "$s" || rc=1
  done
  return $rc
}

ALL=(setup lint sanity pytest molecule)
STAGES=("$@")
((${#STAGES[@]})) || STAGES=("${ALL[@]}")
[[ " ${STAGES[*]} " == *" setup "* ]] || make -s link

declare -a SUMMARY
passed=0 failed=0
for stage in "${STAGES[@]}"; do
  if ! declare -F "stage_$stage" >/dev/null; then
    echo "unknown stage '$stage' (stages: ${ALL[*]})" >&2; exit 2
  fi
  echo "=== stage $stage"
  start=$(date +%s)
  if "stage_$stage"; then result=passed; passed=$((passed + 1)); else result=FAILED; failed=$((failed + 1)); fi
  line=$(printf 'stage %-9s %-6s %5ss' "$stage" "$result" "$(($(date +%s) - start))")
  SUMMARY+=("$line")
  echo "=== $line"
  # Without a working setup nothing else can run meaningfully.
  [[ $stage == setup && $result == FAILED ]] && break
done
echo
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "stages: $passed passed, $failed failed"
((failed == 0))
