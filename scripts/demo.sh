#!/usr/bin/env bash
# `make demo`: a throwaway server on this machine (inventories/local),
# bootstrapped with site.yml, then v1 and v2 of the demo app deployed
# blue-green. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$PWD/.ansible/collections"
HTTP_PORT=${ONEBOX_LOCAL_HTTP_PORT:-8080}

step() { printf '\n==> %s\n' "$*"; }

step "Python venv and the collection link"
make -s venv
step "Docker engine and images"
bash scripts/engine.sh
bash scripts/images.sh all
bash scripts/demo-images.sh
step "The throwaway server (systemd container onebox-local)"
bash scripts/local-server.sh up
step "site.yml: bootstrap, HAProxy, app setup"
ansible-playbook -i inventories/local playbooks/site.yml
for v in v1 v2; do
  step "deploy.yml: demo $v"
  ansible-playbook -i inventories/local playbooks/deploy.yml -e app_version=$v
done

live=$(curl -s -H 'Host: demo.localhost' "http://127.0.0.1:$HTTP_PORT/health" || true)
# The colour taking traffic (the other one stands behind it as HAProxy's fallback).
colour=$(ansible -i inventories/local onebox-local -b -m onebox.platform.app_state \
  -a 'app=demo' -o 2>/dev/null | grep -oE '"live_colour": "[a-z]*"' | cut -d'"' -f4 || true)
cat <<MSG

The demo is live.
  URL:          http://127.0.0.1:$HTTP_PORT/  (Host demo.localhost; HTTPS, self-signed, on :${ONEBOX_LOCAL_HTTPS_PORT:-8443})
  Answer:       $live
  Live colour:  $colour
  Deploy again: ansible-playbook -i inventories/local playbooks/deploy.yml -e app_version=v1
  Roll back:    ansible-playbook -i inventories/local playbooks/rollback.yml
  History:      docker exec onebox-local cat /var/lib/onebox/demo/releases.jsonl
  On the server: docker exec onebox-local onebox status   (onebox rollback demo, onebox maintenance demo on|off)
  Throw away:   scripts/local-server.sh down
MSG
