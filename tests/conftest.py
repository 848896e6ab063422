"""Shared fixtures: module runner, real HAProxy and tiny HTTP backends.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".ansible", "collections")


def _ensure_collection_link():
    link = os.path.join(COLLECTIONS, "ansible_collections", "onebox", "platform")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


_ensure_collection_link()
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under `make test` (ONEBOX_NO_SKIP=1) a skipped test fails: the setup
    stage installs every tool the tests look for, so a skip there means a
    check that silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("ONEBOX_NO_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under make test, where nothing may be: {reason} (see scripts/test.sh setup)"


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_program(path, *args, timeout=300):
    """Run an on-server program of a role (roles/*/files/*.py) with the
    engines it has beside it on a server (ONEBOX_LIB: plugins/module_utils);
    returns (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, path, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, ONEBOX_LIB=os.path.join(ROOT, "plugins", "module_utils")),
        check=False,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_module(name, args, check=False, diff=False, timeout=300, env=None):
    """Run plugins/modules/NAME the way Ansible does (args file on argv)
    and return (rc, result dict)."""
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=diff)}
    # NAME or a FQCN such as community.general.haproxy.
    ns, coll, mod = name.split(".") if "." in name else ("onebox", "platform", name)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(payload, fh)
        path = fh.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"ansible_collections.{ns}.{coll}.plugins.modules.{mod}", path],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, PYTHONPATH=COLLECTIONS, **(env or {})),
        )
    finally:
        os.unlink(path)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(
            f"module {name} printed no JSON: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        ) from None
    return proc.returncode, result


class Backend:
    """A tiny HTTP app: /health answers `health_status`, every path answers
    the version; /slow?s=N holds the request N seconds (a long session);
    a WebSocket upgrade on any path gets 101 and then a text frame
    "tick N" every 0.2 s until the client goes away. A bad release:
    `error_every` N answers 500 to every Nth request (not /health),
    `delay` seconds before every answer (not /health)."""

    def __init__(self, version):
        self.version = version
        self.health_status = 200
        self.error_every = 0
        self.delay = 0.0
        self.count = 0
        self.count_lock = threading.Lock()
        self.required_host = None  # answer 400 to other Host headers, like Django
        self.port = free_port()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    self.websocket()
                    return
                url = urllib.parse.urlparse(self.path)
                status = 200
                if backend.required_host and self.headers.get("Host") != backend.required_host:
                    status = 400
                elif url.path == "/health":
                    status = backend.health_status
                elif url.path == "/slow":
                    time.sleep(float(urllib.parse.parse_qs(url.query).get("s", ["1"])[0]))
                if url.path != "/health":
                    with backend.count_lock:
                        backend.count += 1
                        n = backend.count
                    if backend.delay:
                        time.sleep(backend.delay)
                    if backend.error_every and n % backend.error_every == 0:
                        status = 500
                body = json.dumps({"version": backend.version, "status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def websocket(self):
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.close_connection = True
                n = 0
                try:
                    while True:
                        n += 1
                        msg = f"tick {n}".encode()
                        self.wfile.write(bytes([0x81, len(msg)]) + msg)
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    return

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass

        self.server = None
        self.handler = Handler
        self.start()

    def start(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


HAPROXY_CFG = """
global
    stats socket {dir}/admin.sock mode 600 level admin
    stats socket {dir}/user.sock mode 600 level user
    stats socket ipv4@127.0.0.1:{tcp_port} level admin
    server-state-file {dir}/server-state
    pidfile {dir}/haproxy.pid
    log ring@onebox-traffic format raw local0 info

ring onebox-traffic
    format raw
    maxlen 1024
    size 1048576

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 60s
    load-server-state-from-file global
    option redispatch
    retries 2

frontend web
    bind 127.0.0.1:{http_port}
    default_backend {backend}

backend {backend}
    option httpchk GET /health
    default-server inter 300ms fall 2 rise 2
    server blue 127.0.0.1:{blue_port} check
    server green 127.0.0.1:{green_port} check {green_initial}
{twins}"""
# The haproxy role's backup twins (<colour>_fallback), with its check settings.
TWINS = """    retry-on conn-failure empty-response
    server blue_fallback 127.0.0.1:{blue_port} check backup disabled
    server green_fallback 127.0.0.1:{green_port} check backup disabled
"""


class HAProxy:
    def __init__(self, workdir, blue, green, backend="app", twins=False):
        if not shutil.which("haproxy"):
            pytest.fail("haproxy is not installed (scripts/test.sh setup installs it)")
        self.dir = workdir
        self.socket = os.path.join(workdir, "admin.sock")
        self.user_socket = os.path.join(workdir, "user.sock")
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        self.state_file = os.path.join(workdir, "server-state")
        with open(self.cfg, "w") as fh:
            fh.write(
                HAPROXY_CFG.format(
                    dir=workdir,
                    tcp_port=self.tcp_port,
                    http_port=self.http_port,
                    blue_port=blue.port,
                    green_port=green.port,
                    green_initial="disabled",
                    backend=backend,
                    twins=TWINS.format(blue_port=blue.port, green_port=green.port) if twins else "",
                )
            )
        self.start()

    @property
    def pid(self):
        with open(os.path.join(self.dir, "haproxy.pid")) as fh:
            return int(fh.read().split()[0])

    def start(self, replace=False):
        cmd = ["haproxy", "-f", self.cfg, "-D"]
        if replace:
            cmd += ["-sf", str(self.pid)]
        subprocess.run(cmd, check=True, capture_output=True)
        for _attempt in range(100):
            if os.path.exists(self.socket):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(self.socket)
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("haproxy did not open its socket")

    def reload(self):
        """Start a new process that takes over (-sf), as a reload does."""
        old = self.pid
        self.start(replace=True)
        for _attempt in range(100):
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def get(self, path="/", timeout=5):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def backends():
    blue, green = Backend("v1"), Backend("v2")
    yield blue, green
    blue.stop()
    green.stop()


@pytest.fixture
def haproxy(tmp_path, backends):
    blue, green = backends
    proxy = HAProxy(str(tmp_path), blue, green)
    # blue live and healthy; green in maintenance (disabled in the config).
    from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient, describe_servers

    client = RuntimeClient(proxy.socket)
    wait_for(lambda: describe_servers(client, "app")["blue"]["status"] == "UP")
    yield proxy
    proxy.stop()


# PostgreSQL fixtures live in their own file; importing them here registers them.
from pg_fixtures import appdb, cluster, containerdb, pg_container  # noqa: E402, F401  # pylint: disable=unused-import
