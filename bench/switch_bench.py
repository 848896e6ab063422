"""Traffic switch under constant load: ours against what users do today.

    .venv/bin/python bench/switch_bench.py [--rate 200] [--seconds 60]

One real HAProxy on loopback in front of the demo app containers
(local/demo:v1 and v2, `make images`), a fixed request rate for a fixed
time per method, the switch from v1 to v2 a third of the way in:

  ours       onebox.platform.haproxy_backend (blue -> green, Runtime API)
  reload     edit haproxy.cfg to the new port and reload HAProxy (-sf)
  recreate   replace the container in place (docker rm -f; docker run)
  cg_haproxy community.general.haproxy: enable the new server, then
             disable the old one (two module runs)

Per method: requests, failed requests, p99 and max latency, time from the
start of the switch until only v2 answers. Modules run as Ansible runs
them (one process per call, arguments in a file). Load goes to 127.0.0.1
only and stops after --seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from conftest import COLLECTIONS, run_module  # noqa: E402
from httpcheck import version_at  # noqa: E402

sys.path.insert(0, COLLECTIONS)
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient  # noqa: E402

FRONT = 18600
BLUE, GREEN = 18611, 18612
CONFIG = """
global
    stats socket {sock} mode 600 level admin
    pidfile {pid}
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch
frontend web
    bind 127.0.0.1:{front}
    default_backend app
backend app
    option httpchk GET /health
    http-check expect status 200
    default-server inter 2s rise 2 fall 3 on-marked-down shutdown-sessions
{servers}
"""


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout.strip()


class Load:
    """Open loop: a request every 1/rate s, whatever the answers do."""

    def __init__(self, rate, seconds):
        self.rate, self.seconds = rate, seconds
        self.results = []  # (start, end, ok, version)
        self.lock = threading.Lock()

    def one(self, when):
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start = time.monotonic()
        version = version_at(FRONT, "/", timeout=10)
        with self.lock:
            self.results.append((start, time.monotonic(), version is not None, version))

    def run(self):
        t0 = time.monotonic() + 0.2
        with ThreadPoolExecutor(max_workers=64) as pool:
            for i in range(int(self.rate * self.seconds)):
                pool.submit(self.one, t0 + i / self.rate)


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "admin.sock")
        self.pid = os.path.join(tmp, "haproxy.pid")
        self.cfg = os.path.join(tmp, "haproxy.cfg")

    def write(self, servers):
        with open(self.cfg, "w") as fh:
            fh.write(CONFIG.format(sock=self.sock, pid=self.pid, front=FRONT, servers=servers))

    def haproxy(self, reload=False):
        cmd = ["haproxy", "-D", "-f", self.cfg]
        if reload:
            with open(self.pid) as fh:
                cmd += ["-sf", fh.read().split()[0]]
        subprocess.run(cmd, check=True)

    def stop_haproxy(self):
        try:
            with open(self.pid) as fh:
                for p in fh.read().split():
                    os.kill(int(p), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        time.sleep(0.3)

    def app(self, name, version, port):
        sh("docker", "rm", "-f", name, check=False)
        sh("docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", f"local/demo:{version}")

    def wait_up(self, port, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"nothing answers on {port}")

    def wait_server_up(self, server, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out = RuntimeClient(self.sock).command("show stat")
            except Exception:
                out = ""
            for line in out.splitlines():
                f = line.split(",")
                if len(f) > 17 and f[0] == "app" and f[1] == server and f[17] == "UP":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"server {server} never came UP")


def module(name, args):
    """One module run, as Ansible does it; any failure stops the bench."""
    rc, out = run_module(name, args)
    if rc:
        raise RuntimeError(f"{name} failed: {out}")


def measure(name, rate, seconds, prepare, switch):
    prepare()
    load = Load(rate, seconds)
    runner = threading.Thread(target=load.run)
    runner.start()
    time.sleep(seconds / 3)
    t_switch = time.monotonic()
    switch()
    t_switched = time.monotonic()
    runner.join()
    res = sorted(load.results)
    failed = sum(1 for r in res if not r[2])
    lat = [(r[1] - r[0]) * 1000 for r in res]
    last_old = max((r[1] for r in res if r[3] == "v1"), default=t_switch)
    return {
        "method": name,
        "requests": len(res),
        "failed": failed,
        "p99_ms": round(quantile(lat, 0.99), 1),
        "max_ms": round(max(lat), 1),
        "switch_call_s": round(t_switched - t_switch, 3),
        "only_new_after_s": round(max(0.0, last_old - t_switch), 3),
        "v2_answers": sum(1 for r in res if r[3] == "v2"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    for tool in ("haproxy", "docker"):
        if not shutil.which(tool):
            sys.exit(f"switch_bench: {tool} is missing (make setup installs it)")
    tmp = tempfile.mkdtemp(prefix="onebox-switch-")
    b = Bench(tmp)
    two = "    server blue 127.0.0.1:{b} check\n    server green 127.0.0.1:{g} check disabled".format(b=BLUE, g=GREEN)

    def two_servers():
        b.stop_haproxy()
        b.app("bench-blue", "v1", BLUE)
        b.app("bench-green", "v2", GREEN)
        b.wait_up(BLUE)
        b.wait_up(GREEN)
        b.write(two)
        b.haproxy()
        b.wait_server_up("blue")

    def one_server():
        b.stop_haproxy()
        sh("docker", "rm", "-f", "bench-green", check=False)
        b.app("bench-blue", "v1", BLUE)
        b.wait_up(BLUE)
        b.write(f"    server app 127.0.0.1:{BLUE} check")
        b.haproxy()
        b.wait_server_up("app")

    def ours():
        module("haproxy_backend", {"socket": b.sock, "backend": "app", "active": ["green"], "drain_timeout": 10})

    def standby_checked():
        """The app role's way: the standby colour stays in drain, so HAProxy
        keeps checking it and knows it healthy before the switch."""
        two_servers()
        module("haproxy_backend", {"socket": b.sock, "backend": "app", "active": ["blue"], "inactive_state": "drain"})
        time.sleep(5)  # two checks (rise 2, inter 2s) and a margin

    def ours_drain():
        module(
            "haproxy_backend",
            {"socket": b.sock, "backend": "app", "active": ["green"], "inactive_state": "drain", "drain_timeout": 10},
        )

    def reload():
        b.app("bench-green", "v2", GREEN)
        b.wait_up(GREEN)
        b.write(f"    server app 127.0.0.1:{GREEN} check")
        b.haproxy(reload=True)

    def recreate():
        sh("docker", "rm", "-f", "bench-blue")
        sh("docker", "run", "-d", "--name", "bench-blue", "-p", f"127.0.0.1:{BLUE}:8080", "local/demo:v2")

    def cg_haproxy():
        for host, state in (("green", "enabled"), ("blue", "disabled")):
            module(
                "community.general.haproxy",
                {"socket": b.sock, "backend": "app", "host": host, "state": state, "wait": True},
            )

    runs = [
        ("ours, standby in maint (checks start at the switch)", two_servers, ours),
        ("ours, standby in drain (checked before the switch)", standby_checked, ours_drain),
        ("edit cfg + reload", one_server, reload),
        ("recreate container", one_server, recreate),
        ("community.general.haproxy", two_servers, cg_haproxy),
    ]
    rows = []
    try:
        for name, prepare, switch in runs:
            rows.append(measure(name, args.rate, args.seconds, prepare, switch))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        b.stop_haproxy()
        sh("docker", "rm", "-f", "bench-blue", "bench-green", check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.rate:g} req/s for {args.seconds:g} s per method, switch at {args.seconds / 3:g} s\n")
    print("| method | requests | failed | p99 ms | max ms | switch call s | only v2 after s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['requests']} | {r['failed']} | {r['p99_ms']} | {r['max_ms']} | "
            f"{r['switch_call_s']} | {r['only_new_after_s']} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
