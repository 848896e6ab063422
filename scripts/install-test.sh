#!/usr/bin/env bash
# The collection as users install it (make test, stage "install"):
#   1. `ansible-galaxy collection build` from this checkout;
#   2. for the oldest and the newest ansible-core of meta/runtime.yml, a
#      fresh virtualenv with only that ansible-core, the tarball installed
#      with `ansible-galaxy collection install --offline` beside the
#      collections galaxy.yml declares as dependencies (Galaxy is not
#      reachable here: their tarballs are made from the `ansible` package
#      in .venv, the same content Galaxy serves);
#   3. with the oldest, the previous version's collection and
#      inventories/local converge a fresh throwaway server and deploy its
#      apps, then `ansible-playbook onebox.platform.site` of this one moves
#      it over under load (no failed request; each app on its own database
#      role and Redis user); with each, the deploy step of
#      examples/ci/github/workflows/deploy.yml, its exact `run:` text, with
#      the example's environment pointed at that server; with the newest,
#      the rollback workflow's step too.
# No ansible.cfg of this checkout is used; only the installed collection.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export ONEBOX_LOCAL_NAME=${ONEBOX_INSTALL_SERVER:-onebox-install}
export ONEBOX_LOCAL_NETWORK=$ONEBOX_LOCAL_NAME
export ONEBOX_LOCAL_HTTP_PORT=${ONEBOX_INSTALL_HTTP_PORT:-8180}
export ONEBOX_LOCAL_HTTPS_PORT=${ONEBOX_INSTALL_HTTPS_PORT:-8543}
WORK=$(mktemp -d)
KEEP=${ONEBOX_INSTALL_KEEP:-}
cleanup() {
  [[ -n $KEEP ]] || bash scripts/local-server.sh down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
t0=$SECONDS
stamp() { echo "--- install: $* ($((SECONDS - t0))s)"; }

read -r OLDEST NEWEST_EXCL < <(python3 - <<'PY'
import re
text = open("meta/runtime.yml").read()
m = re.search(r'requires_ansible:\s*">=(\d+\.\d+)(?:\.\d+)?,<(\d+\.\d+)(?:\.\d+)?"', text)
if not m:
    raise SystemExit("meta/runtime.yml: requires_ansible must read \">=X.Y.Z,<X.Y.Z\"")
print(m.group(1), m.group(2))
PY
)
major=${NEWEST_EXCL%%.*} minor=${NEWEST_EXCL#*.}
NEWEST="$major.$((minor - 1))"
CORES=("$OLDEST" "$NEWEST")
echo "--- install: ansible-core $OLDEST (oldest) and $NEWEST (newest) of meta/runtime.yml"

# 1. The collection's tarball, and its dependencies' tarballs.
.venv/bin/ansible-galaxy collection build "$ROOT" --output-path "$WORK/dist" >/dev/null
ls "$WORK"/dist/onebox-platform-*.tar.gz >/dev/null
SITE=$(.venv/bin/python -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__path__[0]))')
# galaxy.yml's dependencies and theirs (community.docker needs
# community.library_inventory_filtering_v1, say), as Galaxy would resolve them.
mapfile -t DEPS < <(.venv/bin/python - "$SITE" <<'PY2'
import json, os, sys, yaml
site = sys.argv[1]
todo = list(yaml.safe_load(open("galaxy.yml")).get("dependencies") or {})
seen = []
while todo:
    name = todo.pop(0)
    if name in seen:
        continue
    seen.append(name)
    manifest = os.path.join(site, "ansible_collections", *name.split("."), "MANIFEST.json")
    todo += list(json.load(open(manifest))["collection_info"].get("dependencies") or {})
print("\n".join(seen))
PY2
)
# The ansible package leaves out some files its collections' FILES.json
# lists (CI scripts); the staged copy's FILES.json and MANIFEST.json name
# only what is there, with their real checksums, as a Galaxy tarball would.
for dep in "${DEPS[@]}"; do
  src="$SITE/ansible_collections/${dep%%.*}/${dep#*.}"
  [[ -f $src/MANIFEST.json ]] || { echo "dependency $dep: not in the ansible package of .venv" >&2; exit 1; }
  stage="$WORK/stage/$dep"
  mkdir -p "$stage" && cp -a "$src/." "$stage/" && find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  ver=$(.venv/bin/python - "$stage" <<'PY2'
import hashlib, json, os, sys
stage = sys.argv[1]
files = json.load(open(os.path.join(stage, "FILES.json")))
files["files"] = [f for f in files["files"] if os.path.lexists(os.path.join(stage, f["name"]))]
data = json.dumps(files, indent=4).encode()
open(os.path.join(stage, "FILES.json"), "wb").write(data)
manifest = json.load(open(os.path.join(stage, "MANIFEST.json")))
manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(data).hexdigest()
json.dump(manifest, open(os.path.join(stage, "MANIFEST.json"), "w"), indent=4)
print(manifest["collection_info"]["version"])
PY2
)
  mapfile -t members < <(ls -A "$stage")
  tar -C "$stage" -czf "$WORK/dist/${dep/./-}-$ver.tar.gz" -- "${members[@]}"
done
stamp "built: $(cd "$WORK/dist" && echo *)"

# 2 and 3, for each ansible-core.
bash scripts/engine.sh
bash scripts/images.sh base
bash scripts/demo-images.sh >/dev/null
bash scripts/local-server.sh up

# The `run:` text of step STEP_ID of job JOB in examples/ci/github/workflows/FILE.
step() {
  .venv/bin/python - "$@" <<'PY'
import sys, yaml
name, job, step_id = sys.argv[1:]
wf = yaml.safe_load(open(f"examples/ci/github/workflows/{name}"))
print(next(s["run"] for s in wf["jobs"][job]["steps"] if s.get("id") == step_id))
PY
}

answers() {
  local answer
  answer=$(curl -s -H 'Host: demo.localhost' "http://127.0.0.1:$ONEBOX_LOCAL_HTTP_PORT/health")
  echo "demo answers: $answer"
  [[ $answer == *"\"$1\""* ]] || { echo "demo does not answer $1" >&2; return 1; }
}

# The previous version (UPGRADE_FROM: the last main before the apps were
# isolated from each other), its collection and its inventories/local, on the
# fresh server: site.yml, then each app deployed, as a user had it.
UPGRADE_FROM=${ONEBOX_UPGRADE_FROM:-9ed5ef5}
previous_version_server() {
  local venv=$1 old=$WORK/previous
  mkdir -p "$old/tree" "$old/collections"
  git archive "$UPGRADE_FROM" | tar -x -C "$old/tree"
  ln -sfn "$ROOT/.cache" "$old/tree/.cache"   # its inventory's images and key, as in a checkout
  "$venv/bin/ansible-galaxy" collection build "$old/tree" --output-path "$old/dist" >/dev/null
  (cd "$WORK" && env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH="$old/collections" "$venv/bin/ansible-galaxy" collection install \
    --offline -p "$old/collections" "$old"/dist/*.tar.gz "$WORK"/dist/community-*.tar.gz "$WORK"/dist/ansible-*.tar.gz >/dev/null)
  previous() {
    (cd "$WORK" && env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH="$old/collections" ANSIBLE_PIPELINING=1 PATH="$venv/bin:$PATH" "$@")
  }
  previous ansible-playbook onebox.platform.site -i "$old/tree/inventories/local" >"$WORK/previous-site.log" ||
    { tail -40 "$WORK/previous-site.log"; return 1; }
  for app in demo blog mailer; do
    previous ansible-playbook onebox.platform.deploy -i "$old/tree/inventories/local" -e app=$app -e version=v1 \
      >"$WORK/previous-deploy.log" || { tail -40 "$WORK/previous-deploy.log"; return 1; }
  done
  answers v1
  # Its inventory named a storage driver (vfs) that this one's does not.
  DRIVER_BEFORE=$(docker exec "$ONEBOX_LOCAL_NAME" docker info -f '{{.Driver}}')
  stamp "previous version ($UPGRADE_FROM): site.yml and demo, blog, mailer v1 (storage driver $DRIVER_BEFORE)"
}

# Requests to both web apps, about 20 a second each, until stop_load (at
# most 25 minutes, 30,000 requests each): every answer's status in a file,
# and "stopped" at its end when it lasted until stop_load.
start_load() {
  LOAD_PIDS=()
  rm -f "$WORK/stop-load"
  for host in demo.localhost blog.localhost; do
    (end=$((SECONDS + 1500)) n=0
     while [[ ! -e $WORK/stop-load && $SECONDS -lt $end && $n -lt 30000 ]]; do
       curl -s -o /dev/null -m 10 -w '%{http_code}\n' -H "Host: $host" "http://127.0.0.1:$ONEBOX_LOCAL_HTTP_PORT/health" || echo 000
       n=$((n + 1))
       sleep 0.05
     done >"$WORK/load-$host"
     [[ -e $WORK/stop-load ]] && echo stopped >"$WORK/load-$host.end") &
    LOAD_PIDS+=($!)
  done
  # The data path too (busybox's app has no database client): about once a
  # second, the credentials of demo's live colour, as its container has
  # them, against its database (psql in its PostgreSQL container) and, once
  # the move gave demo a Redis, its Redis: "ok", or what failed.
  (end=$((SECONDS + 1500)) n=0
   while [[ ! -e $WORK/stop-load && $SECONDS -lt $end && $n -lt 1500 ]]; do
     docker exec "$ONEBOX_LOCAL_NAME" sh -c "$DATA_PROBE" 2>&1 | tail -n 1 | tr -d '\r' || echo "probe failed"
     n=$((n + 1))
     sleep 1
   done >"$WORK/load-data"
   [[ -e $WORK/stop-load ]] && echo stopped >"$WORK/load-data.end") &
  LOAD_PIDS+=($!)
}

# Run on the server: demo's live colour (onebox status), its container's
# DATABASE_URL and REDIS_URL pointed at 127.0.0.1 inside the database's and
# Redis's own containers, a query and a write with each (single quotes: it
# expands on the server).
# shellcheck disable=SC2016
DATA_PROBE='live=$(onebox status demo | sed -n "1s/.*live on \([a-z]*\) .*/\1/p")
[ -n "$live" ] || { echo "demo has no live colour"; exit 0; }
env=$(docker inspect -f "{{range .Config.Env}}{{println .}}{{end}}" "demo-$live")
db=$(printf "%s\n" "$env" | sed -n "s/^DATABASE_URL=//p" | sed -E "s#^(postgres(ql)?://([^@/]*@)?)[^/]*#\1127.0.0.1:5432#")
rd=$(printf "%s\n" "$env" | sed -n "s/^REDIS_URL=//p" | sed -E "s#^(rediss?://([^@/]*@)?)[^/]*#\1127.0.0.1:6379#")
[ -n "$db" ] || { echo "demo-$live has no DATABASE_URL"; exit 0; }
got=$(docker exec demo-postgres psql "$db" -XAtc "SELECT 1" 2>&1) || { echo "database ($live): $got"; exit 0; }
if [ -n "$rd" ]; then
  got=$(docker exec demo-redis redis-cli --no-auth-warning -u "$rd" INCR demo:probe 2>&1)
  case $got in ""|*[!0-9]*) echo "redis ($live): $got"; exit 0 ;; esac
fi
echo "ok${rd:+ +redis}"'

stop_load() {
  touch "$WORK/stop-load"
  wait "${LOAD_PIDS[@]}"
}

# 0 failed requests and data probes while it moved over; each app now runs with its own
# database role (and demo with its own Redis), its tables handed to the role.
check_moved_over() {
  local host total bad
  for host in demo.localhost blog.localhost; do
    total=$(wc -l <"$WORK/load-$host")
    bad=$(grep -vc '^200$' "$WORK/load-$host" || true)
    echo "--- install: $host during the move: $total requests, $bad not 200"
    [[ -e $WORK/load-$host.end ]] || { echo "the load on $host ended before site.yml did" >&2; return 1; }
    ((total > 100 && bad == 0)) || { echo "requests failed while site.yml moved the server over" >&2; return 1; }
  done
  local redis
  total=$(wc -l <"$WORK/load-data")
  bad=$(grep -vcxE 'ok( \+redis)?' "$WORK/load-data" || true)
  redis=$(grep -cx 'ok +redis' "$WORK/load-data" || true)
  echo "--- install: demo's database during the move: $total tries, $bad failed; its Redis too in $redis (once it had one)"
  { grep -vxE 'ok( \+redis)?' "$WORK/load-data" || true; } | sort | uniq -c | head -5
  [[ -e $WORK/load-data.end ]] || { echo "the data probe ended before site.yml did" >&2; return 1; }
  ((total > 20 && bad == 0 && redis > 0)) ||
    { echo "demo's live credentials failed while site.yml moved the server over" >&2; return 1; }
  local driver env
  # The engine still keeps its containers where it did (a restart with
  # another storage driver would know none of them).
  driver=$(docker exec "$ONEBOX_LOCAL_NAME" docker info -f '{{.Driver}}')
  [[ $driver == "$DRIVER_BEFORE" ]] ||
    { echo "site.yml moved the engine from storage driver $DRIVER_BEFORE to $driver" >&2; return 1; }
  # The live colour: the one site.yml started last (the other one stands by
  # with the old environment, as the fallback of a blue-green switch).
  env=$(docker exec "$ONEBOX_LOCAL_NAME" sh -c 'docker inspect -f "{{.Created}} {{json .Config.Env}}" \
    $(docker ps -q --filter name=^demo-blue$ --filter name=^demo-green$) | sort | tail -n 1')
  [[ $env == *'DATABASE_URL=postgres://demo:'* && $env == *'REDIS_URL=redis://demo:'* && $env != *'postgres://postgres:'* ]] ||
    { echo "demo still runs with the superuser's DATABASE_URL" >&2; return 1; }
  docker exec "$ONEBOX_LOCAL_NAME" docker exec demo-postgres psql -U postgres -XAtc \
    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'demo'" | grep -qx demo ||
    { echo "the demo database is not its role's" >&2; return 1; }
  stamp "moved over: demo runs as its own role and Redis user"
}

for core in "${CORES[@]}"; do
  venv=$ROOT/.cache/install/core-$core
  if [[ ! -x $venv/bin/ansible-playbook ]]; then
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install -q "ansible-core>=$core,<$core.999" docker requests 2>&1 | grep -v "^WARNING: Location" || true
  fi
  "$venv/bin/ansible" --version | sed -n 1p
  coll=$WORK/collections-$core
  (cd "$WORK" && env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH="$coll" "$venv/bin/ansible-galaxy" collection install \
    --offline -p "$coll" "$WORK"/dist/*.tar.gz >/dev/null)
  ls "$coll/ansible_collections/onebox/platform/MANIFEST.json" >/dev/null
  stamp "ansible-core $core: collection installed"
  # Only the installed collection: no ansible.cfg, no link to the checkout.
  run() {
    # Pipelining, as the README advises for any inventory (half the time per task).
    (cd "$WORK" && env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH="$coll" ANSIBLE_PIPELINING=1 PATH="$venv/bin:$PATH" "$@")
  }
  # site.yml from the tarball on a fresh server with the oldest; the newest
  # (which every Molecule scenario runs site.yml with, from the checkout)
  # goes on to the pipeline's steps on that server. A second site.yml here
  # cost 80 s of make test's 45 minutes.
  if [[ $core == "$OLDEST" ]]; then
    # An existing server, as the previous version left it, moved over by
    # this version's site.yml under load (issue 23: without downtime).
    previous_version_server "$venv"
    start_load
    run ansible-playbook onebox.platform.site -i "$ROOT/inventories/local"
    stop_load
    stamp "ansible-core $core: site.yml over the previous version's server"
    check_moved_over
  fi
  printf 'not-secret-local-vault-password' >"$WORK/vault-pass"
  pipeline_env=(ONEBOX_INVENTORY="$ROOT/inventories/local" ONEBOX_LIMIT=local ONEBOX_APP=demo
    ONEBOX_VAULT_PASSWORD_FILE="$WORK/vault-pass" RUNNER_TEMP="$WORK")
  # The example workflow's deploy step, word for word.
  version=v2
  [[ $core == "$OLDEST" ]] && version=v1
  run env "${pipeline_env[@]}" ONEBOX_VERSION=$version bash --noprofile --norc -eo pipefail -c "$(step deploy.yml deploy deploy)"
  answers "$version"
  grep -q 'failed=0' "$WORK/deploy.log"
  stamp "ansible-core $core: the deploy workflow's deploy step deployed demo $version"
  if [[ $core != "$OLDEST" ]]; then
    # The rollback workflow's step, as Actions > rollback > Run workflow with no version.
    run env "${pipeline_env[@]}" ROLLBACK_TO="" bash --noprofile --norc -eo pipefail -c "$(step rollback.yml rollback rollback)"
    answers v1
    grep -q 'failed=0' "$WORK/rollback.log"
    stamp "ansible-core $core: the rollback workflow's step went back to demo v1"
  fi
done
stamp "done"
