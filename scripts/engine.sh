#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's and start it when
# none runs (machines without systemd, like CI here, start none).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  systemctl start docker
else
  nohup dockerd >/var/log/onebox-dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "engine: dockerd did not answer within 60 s; see /var/log/onebox-dockerd.log" >&2
exit 1
