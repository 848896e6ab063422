#!/usr/bin/env bash
# `make demo`: a throwaway server on this machine (inventories/local),
# bootstrapped with site.yml, with three apps from one model: the demo web
# app (v1 then v2, blue-green), a blog on its own domain, and a worker
# (v1 then v2, the new one healthy before the old one stops). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$PWD/.ansible/collections"
HTTP_PORT=${ONEBOX_LOCAL_HTTP_PORT:-8080}

step() { printf '\n==> %s\n' "$*"; }

step "Python venv and the collection link"
make -s venv
step "Docker engine and images"
bash scripts/engine.sh
# The demo server starts from the base image: not the packages image the
# scenarios' servers use.
bash scripts/images.sh postgres
bash scripts/images.sh redis
bash scripts/demo-images.sh
step "The throwaway server (systemd container onebox-local)"
bash scripts/local-server.sh up
step "site.yml: bootstrap, HAProxy, app setup"
ansible-playbook -i inventories/local playbooks/site.yml
for run in demo:v1 demo:v2 blog:v1 mailer:v1 mailer:v2; do
  step "deploy.yml: ${run%%:*} ${run#*:}"
  ansible-playbook -i inventories/local playbooks/deploy.yml -e app="${run%%:*}" -e version="${run#*:}"
done

demo=$(curl -s -H 'Host: demo.localhost' "http://127.0.0.1:$HTTP_PORT/health" || true)
blog=$(curl -s -H 'Host: blog.localhost' "http://127.0.0.1:$HTTP_PORT/health" || true)
step "On the server: onebox status"
docker exec onebox-local onebox status --last 2
cat <<MSG

The demo is live: three apps on one server.
  demo:         http://127.0.0.1:$HTTP_PORT/  (Host demo.localhost or www.demo.localhost) answers $demo
  blog:         http://127.0.0.1:$HTTP_PORT/  (Host blog.localhost) answers $blog
                HTTPS, self-signed, on :${ONEBOX_LOCAL_HTTPS_PORT:-8443}
  mailer:       a worker: docker exec onebox-local docker logs --tail 5 mailer-green
  Deploy:       ansible-playbook -i inventories/local playbooks/deploy.yml -e app=demo -e version=v1
  Roll back:    ansible-playbook -i inventories/local playbooks/rollback.yml -e app=demo
  History:      docker exec onebox-local cat /var/lib/onebox/demo/releases.jsonl
  On the server: docker exec onebox-local onebox status   (onebox rollback APP, onebox maintenance APP on|off)
  Throw away:   scripts/local-server.sh down
MSG
