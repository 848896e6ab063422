#!/usr/bin/env bash
# The demo app, as images built from Debian's static busybox (no registry):
#   local/demo:v1, v2  healthy; / and /health answer {"version": "vN"}
#   local/demo:v3      broken: never healthy (no /health)
#   local/demo:v4      healthy at first, then /health disappears after
#                      DEMO_FAIL_AFTER seconds (a crash after the switch)
#   local/demo:v5      /health fine, but / answers 500 to every 5th request
#                      and the API route /cgi-bin/api always (a broken page)
#   local/demo:v6      /health fine, but / answers after 0.4 s (a slow release)
#   Each also runs as a worker with command /worker.sh, or bin/jobs and
#   bin/scheduler as an app's image has them (jobs, graceful stop), and
#   has bin/rails db:migrate (a migration that says so and succeeds).
#   Healthy: /health answers, or, run as a worker, it takes jobs.
# Each is also saved to .cache/images/demo-vN.tar for `docker load` on a server.
set -euo pipefail
cd "$(dirname "$0")/.."
BUSYBOX=/bin/busybox
if ! "$BUSYBOX" --list 2>/dev/null | grep -qx httpd; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
mkdir -p .cache/images
# Scenarios run side by side and each asks for the images: one builds them
# while the others wait.
exec 9>.cache/images/.demo.lock
flock 9
REV=7
for v in v1 v2 v3 v4 v5 v6; do
  tar=.cache/images/demo-$v.tar
  # REV: bump when the image changes, so an older build is replaced. The
  # archive must hold this very image (its id beside it in demo-vN.tar.id):
  # an archive of an older build would go on being loaded on the servers.
  id=$(docker image inspect -f '{{.Id}}' "local/demo:$v" 2>/dev/null || true)
  if [ "$(docker image inspect -f '{{index .Config.Labels "onebox_demo_rev"}}' "local/demo:$v" 2>/dev/null)" = "$REV" ] &&
    [ -s "$tar" ] && [ "$(cat "$tar.id" 2>/dev/null)" = "$id" ]; then continue; fi
  if [ "$(docker image inspect -f '{{index .Config.Labels "onebox_demo_rev"}}' "local/demo:$v" 2>/dev/null)" = "$REV" ]; then
    docker save -o "$tar" "local/demo:$v" && printf '%s\n' "$id" >"$tar.id"
    continue
  fi
  root=$(mktemp -d)
  chmod 755 "$root"
  mkdir -p "$root/bin" "$root/www" "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  for a in sh httpd wget sleep rm cat echo date printf tr cut sha1sum xxd base64 touch kill test nc; do ln -s busybox "$root/bin/$a"; done
  case $v in
    v5)
      # / through a CGI (busybox httpd runs cgi-bin/index.cgi when there is no index.html).
      mkdir -p "$root/www/cgi-bin"
      cat >"$root/www/cgi-bin/index.cgi" <<CGI
#!/bin/sh
n=\$(cat /tmp/requests 2>/dev/null || echo 0)
n=\$((n + 1))
echo "\$n" >/tmp/requests
if [ \$((n % 5)) = 0 ]; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n{"error": "template failed"}\n'
  exit 0
fi
printf 'Content-Type: application/json\r\n\r\n{"version": "$v", "app": "onebox-demo"}\n'
CGI
      ;;
    v6)
      mkdir -p "$root/www/cgi-bin"
      cat >"$root/www/cgi-bin/index.cgi" <<CGI
#!/bin/sh
sleep 0.4
printf 'Content-Type: application/json\r\n\r\n{"version": "$v", "app": "onebox-demo"}\n'
CGI
      ;;
    *) printf '{"version": "%s", "app": "onebox-demo"}\n' "$v" >"$root/www/index.html" ;;
  esac
  [ "$v" = v3 ] || printf '{"version": "%s", "status": "ok"}\n' "$v" >"$root/www/health"
  # /cgi-bin/headers: what the proxy told the app; /cgi-bin/slow?N: answers after N seconds;
  # /cgi-bin/ws?N: a WebSocket that pushes {"version", "n"} once a second for N seconds.
  mkdir -p "$root/www/cgi-bin"
  cat >"$root/www/cgi-bin/headers" <<'CGI'
#!/bin/sh
printf 'Content-Type: application/json\r\n\r\n'
printf '{"x_forwarded_for": "%s", "x_forwarded_proto": "%s", "remote_addr": "%s"}\n' \
  "$HTTP_X_FORWARDED_FOR" "$HTTP_X_FORWARDED_PROTO" "$REMOTE_ADDR"
CGI
  cat >"$root/www/cgi-bin/slow" <<CGI
#!/bin/sh
sleep "\${QUERY_STRING:-1}"
printf 'Content-Type: application/json\r\n\r\n{"version": "$v", "slept": "%s"}\n' "\$QUERY_STRING"
CGI
  # busybox httpd passes a CGI's own status line (101) through and relays its
  # output as written, so a CGI can hold a server-push WebSocket (RFC 6455).
  cat >"$root/www/cgi-bin/ws" <<CGI
#!/bin/sh
key=\$HTTP_SEC_WEBSOCKET_KEY
if [ -z "\$key" ] || [ "\$(echo "\$HTTP_UPGRADE" | tr A-Z a-z)" != websocket ]; then
  printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nwebsocket upgrade expected\n'
  exit 0
fi
accept=\$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "\$key" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "\$accept"
n=0
while [ "\$n" -lt "\${QUERY_STRING:-5}" ]; do
  n=\$((n + 1))
  msg="{\\"version\\": \\"$v\\", \\"n\\": \$n}"
  printf "\\\\201\\\\\$(printf %03o \${#msg})%s" "\$msg"
  sleep 1
done
printf '\210\000'
CGI
  # /cgi-bin/api: an API route (v5's is broken).
  if [ "$v" = v5 ]; then
    cat >"$root/www/cgi-bin/api" <<'CGI'
#!/bin/sh
printf 'Status: 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n{"error": "no such column"}\n'
CGI
  else
    cat >"$root/www/cgi-bin/api" <<CGI
#!/bin/sh
printf 'Content-Type: application/json\r\n\r\n{"version": "$v", "api": "ok"}\n'
CGI
  fi
  chmod 755 "$root/www/cgi-bin/headers" "$root/www/cgi-bin/slow" "$root/www/cgi-bin/ws" "$root/www/cgi-bin/api"
  [ -e "$root/www/cgi-bin/index.cgi" ] && chmod 755 "$root/www/cgi-bin/index.cgi"
  cat >"$root/start.sh" <<'START'
#!/bin/sh
# Serve /www on 8080. DEMO_FAIL_AFTER: remove /health after that many seconds.
# As PID 1, httpd would ignore SIGTERM and every stop would wait for the kill;
# this shell stops it and exits at once, as a well-behaved app does.
if [ -n "${DEMO_FAIL_AFTER:-}" ]; then (sleep "$DEMO_FAIL_AFTER"; rm -f /www/health) & fi
httpd -f -p 8080 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
START
  chmod +x "$root/start.sh"
  # /worker.sh: the same image run as a worker (command: /worker.sh). It takes
  # a job every moment, each DEMO_JOB_SECONDS long, and prints when each job
  # starts and ends; SIGTERM lets the job in hand finish, then it exits 0.
  # Healthy (/tmp/worker-ready) once it is taking jobs.
  cat >"$root/worker.sh" <<WORKER
#!/bin/sh
stop=0
trap 'stop=1' TERM INT
echo "worker $v up"
n=0
touch /tmp/worker-ready
while [ "\$stop" = 0 ]; do
  n=\$((n + 1))
  echo "job \$n start $v \$(date +%s)"
  sleep "\${DEMO_JOB_SECONDS:-3}" &
  pid=\$!
  # A signal interrupts wait: wait again until the job is done.
  while kill -0 "\$pid" 2>/dev/null; do wait "\$pid"; done
  echo "job \$n done $v \$(date +%s)"
done
echo "worker $v stopped after job \$n \$(date +%s)"
WORKER
  chmod +x "$root/worker.sh"
  # What an app's image has: its workers and its migration under bin/ (the
  # working directory is /, so `bin/jobs` is /bin/jobs).
  printf '#!/bin/sh\nexec /worker.sh "$@"\n' >"$root/bin/jobs"
  printf '#!/bin/sh\necho "scheduler %s"\nexec /worker.sh "$@"\n' "$v" >"$root/bin/scheduler"
  cat >"$root/bin/rails" <<RAILS
#!/bin/sh
# bin/rails db:migrate: the release's migration (it only says so here).
[ "\$1" = db:migrate ] || { echo "bin/rails: only db:migrate here" >&2; exit 2; }
echo "migrated to $v"
RAILS
  chmod +x "$root/bin/jobs" "$root/bin/scheduler" "$root/bin/rails"
  changes=(--change 'CMD ["/start.sh"]' --change 'EXPOSE 8080' --change "LABEL onebox_demo_rev=$REV"
    --change 'HEALTHCHECK --interval=2s --timeout=2s --retries=2 CMD test -f /tmp/worker-ready || wget -q -O /dev/null http://127.0.0.1:8080/health || exit 1')
  [ "$v" = v4 ] && changes+=(--change 'ENV DEMO_FAIL_AFTER=15')
  tar -C "$root" -c . | docker import "${changes[@]}" - "local/demo:$v" >/dev/null
  rm -rf "$root"
  docker save -o "$tar" "local/demo:$v"
  docker image inspect -f '{{.Id}}' "local/demo:$v" >"$tar.id"
done
echo "demo images: $(cd .cache/images && printf '%s ' *.tar)"
