#!/usr/bin/env bash
# Build (once, cached by tag) the local images the tests use. No registry is
# needed: the base comes from Debian's archive through debootstrap.
#   local/debian:bookworm  systemd + python3, the Molecule platform image
#   local/debian:bookworm-packages  the same with the bootstrap roles'
#                          packages installed (the servers of the scenarios
#                          that are not about bootstrapping)
#   local/postgres:15      PostgreSQL server, for the docker-exec backup path
#   local/redis:7          Redis server shaped like the official image
#   local/demo:vN          a tiny busybox web app answering its version
set -euo pipefail

BASE=${ONEBOX_BASE_IMAGE:-local/debian:bookworm}
MIRROR=${ONEBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
have() { docker image inspect "$1" >/dev/null 2>&1; }
# current IMAGE LABEL REV: IMAGE exists and was built at revision REV.
current() { [ "$(docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null)" = "$3" ]; }
# save IMAGE NAME: its archive .cache/images/NAME.tar for `docker load` on test servers.
save() {
  mkdir -p .cache/images
  [ -s ".cache/images/$2.tar" ] || docker save -o ".cache/images/$2.tar" "$1"
}

# BASE_REV: bump when the base image changes. It is shaped like Debian's
# own images (the official container image, the cloud images): APT's
# sources hold the release, its updates and the security archive, and it
# carries the updates published when it was built, as a provider's current
# image does (site.yml's "apply the pending security updates" then has
# little to do on each test server: it took 76 s per server without them).
# An image with the updates but without their archive in its sources cannot
# install a package whose dependency the security archive moved on (perl
# against an updated perl-base, for one).
BASE_REV=3
build_base() {
  current "$BASE" onebox_base_rev "$BASE_REV" && return 0
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
  local root; root=$(mktemp -d)
  debootstrap --variant=minbase \
    --include=python3,python3-apt,systemd,systemd-sysv,ca-certificates,iproute2,procps,sudo,gnupg \
    bookworm "$root" "$MIRROR" >/dev/null
  # Keep the image small and let apt inside it start from a fresh index.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  # systemd units that make no sense (or hang) in a container.
  for u in systemd-remount-fs.service systemd-firstboot.service getty.target; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
  done
  # mktemp made it 0700: the image's / must be traversable by non-root users.
  chmod 755 "$root"
  tar -C "$root" -c . | docker import - "$BASE-debootstrap" >/dev/null
  rm -rf "$root"
  local ctx; ctx=$(mktemp -d)
  # Empty package lists must look stale, or apt's cache_valid_time skips
  # the update and nothing can be installed.
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE-debootstrap
RUN printf 'deb %s bookworm main\\ndeb %s bookworm-updates main\\ndeb %s-security bookworm-security main\\n' "$MIRROR" "$MIRROR" "$MIRROR" >/etc/apt/sources.list \\
 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq >/dev/null \\
 && apt-get clean \\
 && rm -rf /var/lib/apt/lists/* && touch -d @0 /var/lib/apt/lists
FROM scratch
COPY --from=0 / /
LABEL onebox_base_rev=$BASE_REV
CMD ["/lib/systemd/systemd"]
DOCKERFILE
  docker build -q -t "$BASE" "$ctx" >/dev/null
  docker rmi "$BASE-debootstrap" >/dev/null
  rm -rf "$ctx"
}

# The base image with the packages the bootstrap roles install (base,
# firewall, Docker from Debian), installed as their tasks install them, and
# nothing else: the servers of the platform, backup and deploy scenarios
# start from it, so each of their converges skips about a minute of
# installing that make test paid four times over (issue 23, item 9). The
# bootstrap scenario and the install test start from the base image and
# install every package from the archive. The lists are read from the roles'
# apt tasks (scripts/server_packages.py, the Python of make venv); the label
# holds them, so a change to the roles' packages builds the image again.
PACKAGES_IMAGE=local/debian:bookworm-packages
PACKAGES_REV=3
build_packages() {
  local lists with without rev
  lists=$("${PYTHON:-.venv/bin/python}" scripts/server_packages.py) ||
    { echo "images.sh: scripts/server_packages.py failed (make venv first)" >&2; return 1; }
  with=$(sed -n 1p <<<"$lists") without=$(sed -n 2p <<<"$lists")
  rev="$PACKAGES_REV-$BASE_REV-$(sha256sum <<<"$lists" | cut -c1-12)"
  current "$PACKAGES_IMAGE" onebox_packages_rev "$rev" && return 0
  local ctx; ctx=$(mktemp -d)
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $with >/dev/null \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $without >/dev/null \\
 && apt-get clean \\
 && rm -rf /var/lib/apt/lists/* && touch -d @0 /var/lib/apt/lists
LABEL onebox_packages_rev=$rev
DOCKERFILE
  docker build -q -t "$PACKAGES_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# Shaped like the official postgres image (docker-library): no USER, so
# `docker exec` runs as root, as users get it; root runs the entrypoint,
# which initialises the cluster and steps down to postgres with gosu;
# SIGINT stops it (fast shutdown). PG_REV: bump when the image changes.
PG_REV=3
build_postgres() {
  current local/postgres:15 onebox_postgres_rev "$PG_REV" && return 0
  rm -f .cache/images/postgres-15.tar
  local ctx; ctx=$(mktemp -d)
  # The postgres user is 999:999, as in the official image; one layer (the
  # servers' nested Docker falls back to vfs where overlay2 cannot run,
  # and vfs copies every layer in full).
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE AS build
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# (the systemd of the base image holds gid 999; the app image needs none of it)
RUN groupmod -g 989 systemd-journal && groupadd -r postgres --gid=999 && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 gosu \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2777 /var/run/postgresql
FROM scratch
COPY --from=build / /
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data
LABEL onebox_postgres_rev=$PG_REV
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=3s --retries=15 CMD pg_isready -q -h 127.0.0.1 -U postgres || exit 1
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
DOCKERFILE
  cat >"$ctx/docker-entrypoint.sh" <<'ENTRY'
#!/bin/sh
# Like the official entrypoint: as root, fix the data directory's owner and
# run again as postgres; as postgres, initialise once (superuser
# POSTGRES_USER with POSTGRES_PASSWORD, POSTGRES_DB), trust on the local
# socket, scram-sha-256 over TCP, then exec the server.
set -e
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  exec gosu postgres "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp); printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" >"$pw"
  initdb -U "${POSTGRES_USER:-postgres}" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  db=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
if [ "$1" = postgres ]; then
  shift
  exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
ENTRY
  chmod +x "$ctx/docker-entrypoint.sh"
  docker build -q -t local/postgres:15 "$ctx" >/dev/null
  rm -rf "$ctx"
}

# Shaped like the official redis image: no USER, WORKDIR /data, root runs
# the entrypoint, which hands /data to redis and steps down with gosu.
REDIS_REV=2
build_redis() {
  current local/redis:7 onebox_redis_rev "$REDIS_REV" && return 0
  rm -f .cache/images/redis-7.tar
  local ctx; ctx=$(mktemp -d)
  # redis is 999:999 as in the official image; one layer, as above.
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE AS build
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN groupmod -g 989 systemd-journal && groupadd -r -g 999 redis && useradd -r -g redis -u 999 redis \
 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server gosu \
 && apt-get clean && rm -rf /var/lib/apt/lists/* && install -d -o redis -g redis /data
FROM scratch
COPY --from=build / /
LABEL onebox_redis_rev=$REDIS_REV
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
DOCKERFILE
  cat >"$ctx/docker-entrypoint.sh" <<'ENTRY'
#!/bin/sh
# Like the official entrypoint: options alone run redis-server; as root,
# hand the data directory to redis and run again as redis.
set -e
case "$1" in -*) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec gosu redis "$0" "$@"
fi
exec "$@"
ENTRY
  chmod +x "$ctx/docker-entrypoint.sh"
  docker build -q -t local/redis:7 "$ctx" >/dev/null
  rm -rf "$ctx"
}

cd "$(dirname "$0")/.."
case "${1:-all}" in
  base) build_base ;;
  packages) build_base; build_packages ;;
  postgres) build_base; build_postgres; save local/postgres:15 postgres-15 ;;
  redis) build_base; build_redis; save local/redis:7 redis-7 ;;
  all) build_base; build_packages; build_postgres; save local/postgres:15 postgres-15; build_redis; save local/redis:7 redis-7 ;;
  *) echo "usage: $0 [base|packages|postgres|redis|all]" >&2; exit 2 ;;
esac
