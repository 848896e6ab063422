# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy Runtime API client and the blue-green switch engine.

Standard library only: it runs on a bare server, from the module and from
the benchmarks alike.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import tempfile
import time

# admin_state bits of `show servers state` (HAProxy's SRV_ADMF_*).
ADMIN_FMAINT = 0x01  # forced maintenance (set server ... state maint)
ADMIN_IMAINT = 0x02  # inherited from a tracked server
ADMIN_CMAINT = 0x04  # "disabled" in the configuration
ADMIN_FDRAIN = 0x08  # forced drain (set server ... state drain)
ADMIN_IDRAIN = 0x10  # inherited drain
ADMIN_RMAINT = 0x20  # DNS resolution failed
ADMIN_HMAINT = 0x40  # hostname not resolved yet
# CMAINT only records that the configuration said "disabled": HAProxy sets it
# together with FMAINT and keeps it after `set server ... state ready|drain`
# has taken the server out of maintenance (seen on 2.6), so it is not part
# of the run-time maintenance test.
MAINT_MASK = ADMIN_FMAINT | ADMIN_IMAINT | ADMIN_RMAINT | ADMIN_HMAINT
DRAIN_MASK = ADMIN_FDRAIN | ADMIN_IDRAIN

# srv_op_state
OP_STATES = {0: "down", 1: "starting", 2: "up", 3: "stopping"}

# Check results that count as passing (show stat check_status).
CHECK_OK = ("L4OK", "L6OK", "L7OK", "L7OKC")


# A colour's twin server line with the `backup` flag: HAProxy sends it
# traffic only when no live server is up. The haproxy role's template writes
# one per colour ("<colour>_fallback").
FALLBACK_SUFFIX = "_fallback"


def fallback_name(server):
    return f"{server}{FALLBACK_SUFFIX}"


class HAProxyError(Exception):
    """Anything that went wrong talking to HAProxy, with a message for people."""


class RuntimeClient:
    """Talks to the Runtime API, one connection per command line.

    ``address`` is a UNIX socket path or ``tcp://host:port``. ``timeout``
    applies to the connection and to every read.
    """

    def __init__(self, address, timeout=5.0):
        self.address = address
        self.timeout = float(timeout)

    def _connect(self):
        if self.address.startswith("tcp://"):
            hostport = self.address[len("tcp://") :]
            host, _sep, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise HAProxyError(f"bad socket address '{self.address}': use tcp://HOST:PORT or a UNIX socket path")
            family, target = (
                socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET,
                (host.strip("[]"), int(port)),
            )
        else:
            if not os.path.exists(self.address):
                raise HAProxyError(
                    f"HAProxy admin socket {self.address} does not exist: is HAProxy running, and is "
                    "'stats socket {0} level admin' in its global section?".format(self.address)
                )
            family, target = socket.AF_UNIX, self.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except PermissionError as exc:
            sock.close()
            raise HAProxyError(
                f"no permission to open HAProxy socket {self.address}: run as root (become: true)"
            ) from exc
        except OSError as exc:
            sock.close()
            raise HAProxyError(f"cannot connect to HAProxy at {self.address}: {exc}") from exc
        return sock

    def command(self, line):
        """Send one command line (several commands may be joined with ';')."""
        sock = self._connect()
        try:
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                try:
                    data = sock.recv(65536)
                except socket.timeout as exc:
                    raise HAProxyError(f"HAProxy did not answer '{line}' within {self.timeout:g} s") from exc
                if not data:
                    break
                chunks.append(data)
        finally:
            sock.close()
        out = b"".join(chunks).decode("utf-8", "replace")
        if out.startswith("Permission denied") or "Unknown command" in out.split("\n", 1)[0]:
            raise HAProxyError(
                f"HAProxy refused '{line.split(';')[0].strip()}': {out.strip().splitlines()[0]}. "
                "The stats socket needs 'level admin'."
            )
        return out

    def set_commands(self, lines):
        """Send state-changing commands in ONE connection; HAProxy answers an
        empty line for each success. Raise with HAProxy's words otherwise."""
        if not lines:
            return
        out = self.command("; ".join(lines))
        errors = [msg.strip() for msg in out.split("\n") if msg.strip()]
        if errors:
            raise HAProxyError(f"HAProxy rejected {lines}: {' / '.join(errors)}")

    def servers_state(self, backend=None):
        """Parse `show servers state [backend]` into {backend: {server: dict}}."""
        out = self.command("show servers state" + (f" {backend}" if backend else ""))
        if backend and "Can't find backend" in out:
            raise HAProxyError(f"HAProxy has no backend '{backend}'")
        lines = out.splitlines()
        header = None
        result = {}
        for line in lines:
            if line.startswith("# "):
                header = line[2:].split()
                continue
            if not header or not line.strip() or line.strip() == "1":
                continue
            row = dict(zip(header, line.split()))
            result.setdefault(row["be_name"], {})[row["srv_name"]] = row
        return result

    def stat(self, backend):
        """Parse `show stat` server rows of one backend into {server: dict}."""
        out = self.command("show stat")
        reader = csv.reader(io.StringIO(out))
        header = None
        rows = {}
        for rec in reader:
            if not rec:
                continue
            if rec[0].startswith("# "):
                header = [rec[0][2:]] + rec[1:]
                continue
            if header is None:
                continue
            row = dict(zip(header, rec))
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
        return rows

    def save_state(self, path):
        """Write `show servers state` to ``path`` atomically, for HAProxy's
        server-state-file: a reload then keeps what the Runtime API set."""
        out = self.command("show servers state")
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".onebox-state-", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(out)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def admin_name(admin_state):
    if admin_state & MAINT_MASK:
        return "maint"
    if admin_state & DRAIN_MASK:
        return "drain"
    return "ready"


def describe_servers(client, backend):
    """Every server of ``backend`` with its admin and operational state,
    check status, sessions and weight. Raise if the backend is unknown."""
    state = client.servers_state(backend).get(backend)
    if not state:
        raise HAProxyError(f"HAProxy has no backend '{backend}' (or it has no servers)")
    stats = client.stat(backend)
    servers = {}
    for name, row in state.items():
        admin = int(row["srv_admin_state"])
        st = stats.get(name, {})
        status = st.get("status", "")
        rise = int(st.get("check_rise") or 0)
        fall = int(st.get("check_fall") or 0)
        health = int(st.get("check_health") or 0)
        checked = status != "no check" and bool(st.get("check_status") or rise)
        servers[name] = {
            "name": name,
            "address": f"{row['srv_addr']}:{row.get('srv_port', '')}",
            "admin_state": admin_name(admin),
            "admin_bits": admin,
            "op_state": OP_STATES.get(int(row["srv_op_state"]), row["srv_op_state"]),
            "status": status,
            "check_status": st.get("check_status", ""),
            "last_check": st.get("last_chk", ""),
            "checked": checked,
            "check_health": health,
            "check_full_health": rise + fall - 1 if checked else 0,
            "sessions": int(st.get("scur") or 0),
            "weight": int(row["srv_uweight"]),
            "backup": st.get("bck") == "1",
        }
    return servers


def is_healthy(server):
    """Up on FRESH evidence. Leaving maintenance, HAProxy starts a server at
    the edge of UP with its stale pre-maintenance result ("DRAIN 1/2 L7OK"),
    so a partial health counter is not enough: it must be full."""
    if server["admin_state"] == "maint":
        return False
    if not server["checked"]:
        return server["op_state"] == "up"
    return (
        server["op_state"] == "up"
        and server["check_status"] in CHECK_OK
        and server["check_health"] >= server["check_full_health"]
    )


def wait_drained(client, backend, names, timeout, poll=0.1, clock=time.monotonic):
    """Wait up to ``timeout`` s until the servers ``names`` of ``backend``
    have no session left (requests in flight, upgraded WebSocket tunnels).
    Returns ({server: sessions still open}, milliseconds waited): empty when
    all drained in time."""
    start = clock()
    deadline = start + float(timeout)
    waiting = {n: 0 for n in names}
    while waiting:
        now = describe_servers(client, backend)
        waiting = {n: now[n]["sessions"] for n in waiting if now[n]["sessions"] > 0}
        if not waiting or clock() >= deadline:
            break
        time.sleep(poll)
    return waiting, round((clock() - start) * 1000.0, 3)


def live_servers(servers):
    return sorted(n for n, s in servers.items() if s["admin_state"] == "ready")


# What the modules return of each server of describe_servers().
PUBLIC_FIELDS = ("admin_state", "op_state", "status", "check_status", "sessions", "weight", "address")


class Switch:
    """Make ``active`` the live servers of ``backend`` and take the rest out.

    Steps: validate → bring maintenance servers that must go live to drain
    (checks resume, no traffic) → wait until they are healthy → one command
    line makes them ready and the others drain → wait for the drained
    servers' sessions to end → maintenance.
    """

    def __init__(
        self,
        client,
        backend,
        active,
        inactive_state="maint",
        weights=None,
        require_healthy=True,
        health_timeout=15.0,
        drain_timeout=30.0,
        poll=0.1,
        clock=time.monotonic,
    ):
        self.client = client
        self.backend = backend
        self.active = list(dict.fromkeys(active))
        self.inactive_state = inactive_state
        self.weights = dict(weights or {})
        self.require_healthy = require_healthy
        self.health_timeout = float(health_timeout)
        self.drain_timeout = float(drain_timeout)
        self.poll = poll
        self.clock = clock
        self.sent = []
        # Only an explicit maintenance request may leave no live server.
        self.allow_empty = False

    def _cmd(self, server, verb):
        return f"set server {self.backend}/{server} {verb}"

    def validate(self, servers):
        if not self.active and not self.allow_empty:
            raise HAProxyError(
                "'active' is empty: that would leave the backend with no live server "
                "(use state=maintenance to take the app down on purpose)"
            )
        unknown = [s for s in self.active + list(self.weights) if s not in servers]
        if unknown:
            raise HAProxyError(
                f"backend '{self.backend}' has no server {', '.join(sorted(set(unknown)))}; "
                f"it has {', '.join(sorted(servers))}"
            )
        for name, weight in self.weights.items():
            if not 0 <= int(weight) <= 256:
                raise HAProxyError(f"weight of {name} must be 0..256, got {weight}")
        if self.inactive_state not in ("maint", "drain"):
            raise HAProxyError(f"inactive_state must be maint or drain, got {self.inactive_state}")

    def plan(self, servers):
        """The commands that bring ``servers`` to the wanted state, in order."""
        others = [n for n in sorted(servers) if n not in self.active]
        wake = [n for n in self.active if servers[n]["admin_state"] == "maint"]
        go_live = [n for n in self.active if servers[n]["admin_state"] != "ready"]
        take_out = [n for n in others if servers[n]["admin_state"] == "ready"]
        finish = [n for n in others if servers[n]["admin_state"] != self.inactive_state]
        weights = [
            self._cmd(n, f"weight {int(w)}") for n, w in sorted(self.weights.items()) if servers[n]["weight"] != int(w)
        ]
        return {
            "wake": [self._cmd(n, "state drain") for n in wake],
            "switch": weights
            + [self._cmd(n, "state ready") for n in go_live]
            + [self._cmd(n, "state drain") for n in take_out],
            "finish": [self._cmd(n, f"state {self.inactive_state}") for n in finish],
            "woken": wake,
            "drained": take_out,
            "finished": finish,
        }

    def expected_after(self, servers):
        after = {}
        for name, srv in servers.items():
            new = dict(srv)
            new["admin_state"] = "ready" if name in self.active else self.inactive_state
            if name in self.weights:
                new["weight"] = int(self.weights[name])
            after[name] = new
        return after

    def _send(self, lines):
        self.client.set_commands(lines)
        self.sent.extend(lines)

    def _wait_healthy(self, names):
        deadline = self.clock() + self.health_timeout
        while True:
            servers = describe_servers(self.client, self.backend)
            sick = [servers[n] for n in names if not is_healthy(servers[n])]
            if not sick:
                return servers
            if self.clock() >= deadline:
                return sick
            time.sleep(self.poll)

    def run(self):
        start = self.clock()
        before = describe_servers(self.client, self.backend)
        self.validate(before)
        plan = self.plan(before)
        result = {
            "before": before,
            "plan": plan,
            "switch_ms": 0.0,
            "drain_ms": 0.0,
            "drained_sessions": {},
            "drain_timed_out": False,
        }
        if self.require_healthy:
            sick_now = [
                before[n] for n in self.active if before[n]["admin_state"] != "maint" and not is_healthy(before[n])
            ]
            self._send(plan["wake"])
            checked = self._wait_healthy(self.active) if (plan["wake"] or sick_now) else before
            if isinstance(checked, list):
                # Put the servers we woke back to sleep: nothing changes for traffic.
                self._send([self._cmd(n, "state maint") for n in plan["woken"]])
                details = "; ".join(
                    f"{s['name']}: {s['status'] or s['op_state']}, check {s['check_status'] or 'none'}"
                    + (f" ({s['last_check']})" if s["last_check"] else "")
                    for s in checked
                )
                raise HAProxyError(
                    f"refusing to make {', '.join(self.active)} live in backend '{self.backend}': not healthy "
                    f"after {self.health_timeout:g} s ({details}). Traffic stays on "
                    f"{', '.join(live_servers(before)) or 'nothing'}."
                )
        else:
            self._send(plan["wake"])
        t0 = self.clock()
        self._send(plan["switch"])
        result["switch_ms"] = round((self.clock() - t0) * 1000.0, 3)
        if plan["drained"]:
            mid = describe_servers(self.client, self.backend)
            result["drained_sessions"] = {n: mid[n]["sessions"] for n in plan["drained"]}
        waiting, result["drain_ms"] = wait_drained(
            self.client,
            self.backend,
            [n for n in plan["finished"] if self.inactive_state == "maint"],
            self.drain_timeout,
            poll=self.poll,
            clock=self.clock,
        )
        waiting = sorted(waiting)
        if waiting:
            # Sessions still open: leave those servers draining (no new
            # traffic) rather than cut the sessions; report it.
            result["drain_timed_out"] = True
            result["still_draining"] = waiting
            finish = [c for c, n in zip(plan["finish"], plan["finished"]) if n not in waiting]
        else:
            finish = plan["finish"]
        self._send(finish)
        result["after"] = describe_servers(self.client, self.backend)
        result["elapsed_ms"] = round((self.clock() - start) * 1000.0, 3)
        result["commands"] = list(self.sent)
        return result
