# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judging a release on its real traffic, as HAProxy saw it.

The haproxy role logs every request to an in-memory ring (``ring onebox-traffic``
in haproxy.cfg) besides syslog. Over the Runtime API, ``show events RING``
dumps what the ring holds (the previous colour's recent requests: the
baseline) and ``show events RING -w -n`` streams each new request as it ends.
Each log line names the backend and server, the status and the server's
response time, so a verification window counts, per server: requests, 5xx
answers and the 95th percentile of the response time. Nothing goes to disk
and no Prometheus is needed.

Standard library only (runs on the server, from the modules and the bench).
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time

RING = "onebox-traffic"

# httplog: client [date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes ... "METHOD URI VER"
LINE = re.compile(
    r"^\S+ \[[^\]]+\] \S+ (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<TR>-?\d+)/(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tr>-?\d+)/\+?(?P<Ta>-?\d+) "
    r'(?P<status>-?\d+) .*?"(?P<method>[A-Z]+) (?P<uri>\S+)'
)


def parse_line(line):
    """One ring line -> {backend, server, status, tr_ms, path} or None."""
    m = LINE.match(line.strip())
    if not m:
        return None
    return {
        "backend": m["backend"],
        "server": m["server"],
        "status": int(m["status"]),
        # Time to the server's response headers; -1 when it never answered.
        "tr_ms": int(m["Tr"]),
        "path": request_path(m["uri"]),
    }


ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def request_path(uri):
    """The path of a logged request URI, without its query. HAProxy logs an
    HTTP/2 request (and an HTTP/1 one sent in absolute form) as
    scheme://authority/path: the path is what verify_skip_paths names."""
    path = ABSOLUTE.sub("", uri, count=1) if "://" in uri else uri
    path = path.split("?", 1)[0].split("#", 1)[0]
    return path if path.startswith("/") or path == "*" else "/" + path


def wilson_interval(errors, total, z=1.96):
    """(low, high) of the confidence interval of errors/total (Wilson; z=1.96
    is 95 % two-sided): "over the limit" means over it with that confidence,
    not "one unlucky request"."""
    if total <= 0:
        return 0.0, 1.0
    p = errors / total
    denom = 1 + z * z / total
    centre = p + z * z / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - margin) / denom), min(1.0, (centre + margin) / denom)


def wilson_lower(errors, total, z=1.96):
    """Lower bound of the Wilson interval of errors/total."""
    return wilson_interval(errors, total, z)[0]


def error_excess(tally, base, z, z_base=1.96, combined=True):
    """How much worse the 5xx share of TALLY is than BASE's at least: TALLY's
    share at the confidence Z gives, BASE's (a sample taken once) at
    Z_BASE's. COMBINED: the bound of the difference (Newcombe's, from the
    two Wilson intervals); else the gap between the intervals themselves,
    which small samples cross less often. BASE None: against no 5xx."""
    p = tally.errors / tally.requests
    low, _high = wilson_interval(tally.errors, tally.requests, z)
    if base is None:
        return low
    q = base.errors / base.requests
    _low, q_high = wilson_interval(base.errors, base.requests, z_base)
    if not combined:
        return low - q_high
    return (p - q) - math.sqrt((p - low) ** 2 + (q_high - q) ** 2)


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of VALUES; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def percentile_bound(values, q, z, upper=False):
    """A confidence bound of the q-th percentile of the population VALUES
    were drawn from, by order statistics: the value at rank n*q -/+ z
    standard deviations of the binomial count below it. Two slow requests
    among twenty move the nearest-rank p95, not its lower bound."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    share = q / 100.0
    spread = z * math.sqrt(n * share * (1 - share))
    rank = math.ceil(n * share + spread) if upper else math.floor(n * share - spread)
    return ordered[min(n, max(1, rank)) - 1]


class Tally:
    """Requests of one server: how many, how many 5xx, response times."""

    def __init__(self):
        self.requests = 0
        self.errors = 0
        self.times = []

    def add(self, rec):
        if rec["status"] < 0:
            # The client went away before any answer: nobody's fault here.
            return
        self.requests += 1
        if 500 <= rec["status"] <= 599:
            self.errors += 1
        if rec["tr_ms"] >= 0:
            self.times.append(rec["tr_ms"])

    def figures(self):
        return {
            "requests": self.requests,
            "errors_5xx": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
            "p95_ms": percentile(self.times, 95),
        }


class Gates:
    """When a release's traffic says it is bad, judged against the previous
    release's recent traffic (the baseline) with the uncertainty of both.

    - 5xx: the new colour's share is over the baseline's by more than
      ``max_error_rate`` (points), with confidence (no baseline, or one of
      fewer than ``min_requests``: over ``max_error_rate`` itself). A steady
      share of 5xx that was there before the deploy is not the release's.
    - latency: its p95 (a lower confidence bound of it) is over
      max(``latency_factor`` x the baseline p95, the baseline p95 +
      ``latency_floor_ms``), the baseline p95 taken at its upper confidence
      bound. No baseline: no latency gate.

    Nothing is judged before ``min_requests`` (the probes decide). While the
    window runs the traffic is judged again and again, so only overwhelming
    evidence decides early (``z_early``: a release answering 20 % 5xx is
    switched back within its first requests); at the end of the window (or
    of a canary step) the whole sample is judged once at ``z_final``. The
    baseline is one sample read once: its bounds are always at ``z_final``;
    early, the new colour's interval must clear the baseline's, at the end
    their difference is bounded (more power on the whole window).
    """

    def __init__(
        self,
        max_error_rate=0.01,
        min_requests=20,
        latency_factor=2.0,
        latency_floor_ms=100,
        z_early=4.0,
        z_final=1.645,
    ):
        if not 0 <= float(max_error_rate) < 1:
            raise ValueError(f"max_error_rate must be from 0 to 1 (0.01 is 1 %), not {max_error_rate}")
        if int(min_requests) < 1:
            raise ValueError(f"min_requests must be at least 1, not {min_requests}")
        if float(latency_factor) < 1:
            raise ValueError(f"latency_factor must be at least 1, not {latency_factor}")
        self.max_error_rate = float(max_error_rate)
        self.min_requests = int(min_requests)
        self.latency_factor = float(latency_factor)
        self.latency_floor_ms = float(latency_floor_ms)
        self.z_early = float(z_early)
        self.z_final = float(z_final)

    def usable(self, base):
        """BASE when it holds enough requests to compare with, else None."""
        return base if base is not None and base.requests >= self.min_requests else None

    def latency_bound(self, base):
        """The p95 (ms) the new colour must stay under; None without a baseline."""
        base = self.usable(base)
        if base is None or len(base.times) < self.min_requests:
            return None
        high = percentile_bound(base.times, 95, self.z_final, upper=True)
        return max(self.latency_factor * high, high + self.latency_floor_ms)

    def judge(self, tally, base=None, final=False):
        """None while the traffic is fine (or too little to judge), else why
        it is bad. BASE: the baseline's Tally (None: there is none). FINAL:
        the judgement of the whole window, at z_final."""
        if tally.requests < self.min_requests:
            return None
        z = self.z_final if final else self.z_early
        base = self.usable(base)
        if tally.errors and error_excess(tally, base, z, self.z_final, combined=final) > self.max_error_rate:
            share = 100.0 * tally.errors / tally.requests
            if base is None:
                limit = f"over the {100 * self.max_error_rate:g} % limit"
            else:
                limit = (
                    f"over the previous release's {100.0 * base.errors / base.requests:.1f} % "
                    f"+ {100 * self.max_error_rate:g} %"
                )
            return f"{tally.errors} of {tally.requests} requests answered 5xx ({share:.1f} %, {limit})"
        bound = self.latency_bound(base)
        if bound is not None and len(tally.times) >= self.min_requests:
            low = percentile_bound(tally.times, 95, z)
            if low > bound:
                return (
                    f"p95 response time {percentile(tally.times, 95)} ms over {tally.requests} requests "
                    f"(at least {low} ms) is over the bound of {bound:g} ms "
                    f"(the previous colour's p95 was {percentile(base.times, 95)} ms)"
                )
        return None


def _command_socket(address, timeout):
    if address.startswith("tcp://"):
        host, _sep, port = address[len("tcp://") :].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    return sock


def ring_history(client, ring=RING, only=None):
    """Every line the ring holds now (``show events RING``), parsed; with
    ONLY ("backend/server"), just that server's lines (the ring holds every
    app's requests: parsing only the wanted ones keeps this quick)."""
    out = client.command(f"show events {ring}")
    if out.startswith("No such") or "Unknown" in out.split("\n", 1)[0]:
        raise LookupError(
            f"HAProxy has no ring '{ring}' ({out.strip()}): re-run site.yml, whose haproxy role adds it to haproxy.cfg"
        )
    lines = out.splitlines()
    if only:
        needle = f" {only} "
        lines = [line for line in lines if needle in line]
    return [rec for rec in (parse_line(line) for line in lines) if rec]


def skipped(path, patterns):
    """Whether PATH is one of PATTERNS: equal, or starting with a pattern
    that ends in * ("/events/*": long polls, streams)."""
    return any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in patterns)


def baseline(records, backend, server, skip_paths=(), last=3000):
    """The recent requests of BACKEND/SERVER among RECORDS, as a Tally."""
    tally = Tally()
    mine = [
        r for r in records if r["backend"] == backend and r["server"] == server and not skipped(r["path"], skip_paths)
    ]
    for rec in mine[-last:]:
        tally.add(rec)
    return tally


class Watcher:
    """Streams the ring in a thread and tallies BACKEND's requests per server
    from now on (``show events RING -w -n``; reconnects if HAProxy closes the
    stream, for example on a reload). ``skip_paths``: requests not counted as
    traffic (the health probes of the window itself)."""

    def __init__(self, address, backend, ring=RING, skip_paths=(), timeout=5.0):
        self.address = address
        self.backend = backend
        self.ring = ring
        self.skip_paths = tuple(skip_paths)
        self.timeout = timeout
        self.tallies = {}
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.error = None
        self.sock = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        # The stream must be open before traffic is switched: nothing missed.
        self.ready.wait(self.timeout)
        if self.error:
            raise RuntimeError(self.error)
        return self

    def stop(self):
        self.stop_flag.set()
        sock = self.sock
        if sock is not None:
            # Wakes the reader at once instead of at its next read timeout.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(self.timeout + 1)

    def reset(self):
        """Start counting afresh (a new canary step)."""
        with self.lock:
            self.tallies = {}

    def tally(self, server):
        with self.lock:
            t = self.tallies.get(server, Tally())
            copy = Tally()
            copy.requests, copy.errors, copy.times = t.requests, t.errors, list(t.times)
            return copy

    def _feed(self, line):
        rec = parse_line(line)
        if not rec or rec["backend"] != self.backend or skipped(rec["path"], self.skip_paths):
            return
        with self.lock:
            self.tallies.setdefault(rec["server"], Tally()).add(rec)

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                sock = self.sock = _command_socket(self.address, self.timeout)
            except OSError as exc:
                self.error = f"cannot stream HAProxy's ring '{self.ring}' from {self.address}: {exc}"
                self.ready.set()
                return
            try:
                sock.sendall(f"show events {self.ring} -w -n\n".encode())
                sock.settimeout(0.2)
                buf = b""
                first = True
                while not self.stop_flag.is_set():
                    if first:
                        # HAProxy answers an unknown ring at once; a good one stays silent.
                        try:
                            data = sock.recv(65536)
                        except socket.timeout:
                            data = None
                        if data is not None and data.startswith(b"No such"):
                            self.error = (
                                f"HAProxy has no ring '{self.ring}': re-run site.yml (the haproxy role adds it)"
                            )
                            self.ready.set()
                            return
                        first = False
                        self.ready.set()
                        if data is None:
                            continue
                    else:
                        try:
                            data = sock.recv(65536)
                        except socket.timeout:
                            continue
                    if not data:
                        break
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        self._feed(line.decode("utf-8", "replace"))
            except OSError:
                time.sleep(0.1)
            finally:
                sock.close()
