#!/usr/bin/env bash
# The throwaway server of inventories/local: a systemd container run with
# the flags that work without --privileged (see the README, "Testing").
#   scripts/local-server.sh up|down|status
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${ONEBOX_LOCAL_NAME:-onebox-local}
IMAGE=${ONEBOX_BASE_IMAGE:-local/debian:bookworm}
NET=${ONEBOX_LOCAL_NETWORK:-onebox-local}
# Loopback ports of this machine that reach the server's HTTP(S).
HTTP_PORT=${ONEBOX_LOCAL_HTTP_PORT:-8080}
HTTPS_PORT=${ONEBOX_LOCAL_HTTPS_PORT:-8443}

up() {
  mkdir -p .cache/local
  [ -f .cache/local/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C onebox-local -f .cache/local/id_ed25519
  bash scripts/images.sh base
  docker network inspect "$NET" >/dev/null 2>&1 || docker network create "$NET" >/dev/null
  if ! docker container inspect "$NAME" >/dev/null 2>&1; then
    docker run -d --name "$NAME" --hostname "$NAME" --network "$NET" \
      --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add NET_RAW --cap-add SYS_PTRACE \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
      --tmpfs /run --tmpfs /run/lock \
      -v "$NAME-docker:/var/lib/docker" \
      -p "127.0.0.1:$HTTP_PORT:80" -p "127.0.0.1:$HTTPS_PORT:443" \
      "$IMAGE" /lib/systemd/systemd >/dev/null
  fi
  docker start "$NAME" >/dev/null
  for _ in $(seq 1 60); do
    state=$(docker exec "$NAME" systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) echo "$NAME is up ($state)"; return 0 ;; esac
    sleep 1
  done
  echo "$NAME did not finish booting" >&2; exit 1
}

down() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  docker volume rm "$NAME-docker" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  echo "$NAME removed"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) docker ps -a --filter "name=^/$NAME$" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
