"""Helpers every Molecule scenario's tests share: the hosts (reached with
`docker exec`), a container's address, ansible-playbook run against the
scenario's inventory from the project, and HTTP load through HAProxy that
counts every request. Each scenario's tests/conftest.py
puts this directory on sys.path."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import testinfra

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host(name):
    """A testinfra host for the container NAME."""
    return testinfra.get_host(f"docker://{name}")


def container_ip(name):
    """The first address of the container NAME on its Docker networks."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0]


def ansible_env(**extra):
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{PROJECT}/.ansible/collections",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    # A scenario whose inventory reads Vault-encrypted files has its test-only
    # vault password beside its molecule.yml.
    scenario = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")
    if scenario and os.path.exists(os.path.join(scenario, "vault-password")):
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = os.path.join(scenario, "vault-password")
    # The scenario's -vvv log of its own site.yml runs is not the tests' log.
    env.pop("ANSIBLE_LOG_PATH", None)
    env.pop("ANSIBLE_LOG_VERBOSITY", None)
    env.update(extra)
    return env


def playbook_argv(playbook, *args, inventory=None):
    """ansible-playbook on the scenario's inventory (or INVENTORY); PLAYBOOK
    is a path, or a name under playbooks/."""
    inventory = inventory or os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    path = playbook if os.path.isabs(playbook) else f"{PROJECT}/playbooks/{playbook}"
    return ["ansible-playbook", "-i", inventory, path, *args]


def run_playbook(playbook, *args, timeout=900, inventory=None, **env):
    """Run it to the end; returns the CompletedProcess (never raises on failure)."""
    return subprocess.run(
        playbook_argv(playbook, *args, inventory=inventory),
        env=ansible_env(**env),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(proc):
    """A run's output, whitespace folded, for substring checks."""
    return " ".join((proc.stdout + proc.stderr).split())


def record_json(path, key, value):
    """Put VALUE under KEY in the JSON results file PATH (tests/output/...),
    keeping what other tests put there."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    data[key] = value
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to ADDRESS with the TLS server name (SNI) and Host of a domain,
    as a browser sends them once DNS points the domain at the server."""

    def __init__(self, address, domain, port=443, timeout=5, context=None):
        super().__init__(domain, port, timeout=timeout, context=context)
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


# The test servers' certificates come from test CAs (Pebble's root changes at
# every start): the load checks answers, test_tls_acme-like tests check chains.
UNVERIFIED = ssl._create_unverified_context()


def get_json(base_url, host_header, path="/", timeout=5):
    """GET through HAProxy with a Host header: (status, JSON body). An
    https:// BASE_URL connects to its address with HOST_HEADER as the TLS
    server name too. A status of 400 or more raises urllib's HTTPError."""
    if base_url.startswith("https://"):
        address = base_url[len("https://") :].split("/")[0]
        port = 443
        if ":" in address:
            address, port = address.rsplit(":", 1)
        conn = _SniConnection(address, host_header, int(port), timeout=timeout, context=UNVERIFIED)
        try:
            conn.request("GET", path, headers={"Host": host_header})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status >= 400:
                raise urllib.error.HTTPError(base_url + path, resp.status, resp.reason, resp.headers, None)
            return resp.status, json.loads(body)
        finally:
            conn.close()
    req = urllib.request.Request(base_url + path, headers={"Host": host_header})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read())


class Load:
    """Constant traffic through HAProxy to one Host from THREADS threads
    (4 threads, a 0.02 s pause: about 150 requests/s); every request is
    counted, with the version that answered and when. Bounded to 15 minutes and
    200,000 requests."""

    def __init__(self, base_url, host_header, threads=4, pause=0.02):
        self.base_url = base_url
        self.host_header = host_header
        self.threads = threads
        self.pause = pause
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.versions = {}
        self.errors = []
        # (time.time(), status (0: no answer), version) of every request.
        self.events = []
        self.workers = []

    def _work(self):
        deadline = time.monotonic() + 900
        while not self.stop_flag.is_set() and time.monotonic() < deadline and self.ok + self.failed < 200000:
            status = 0
            try:
                status, body = get_json(self.base_url, self.host_header)
                good = status == 200
                version = body.get("version")
            except urllib.error.HTTPError as exc:
                good, version, status = False, None, exc.code
                with self.lock:
                    self.errors.append(f"HTTP {exc.code}")
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                good, version = False, None
                with self.lock:
                    self.errors.append(repr(exc)[:200])
            with self.lock:
                self.events.append((time.time(), status, version))
                if good:
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
                else:
                    self.failed += 1
            time.sleep(self.pause)

    def __enter__(self):
        for _i in range(self.threads):
            t = threading.Thread(target=self._work, daemon=True)
            t.start()
            self.workers.append(t)
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        time.sleep(1)
        self.stop_flag.set()
        for t in self.workers:
            t.join()

    @property
    def total(self):
        return self.ok + self.failed


def start_receiver(target, container, fresh=False):
    """receiver.py (Slack, webhook and SMTP stand-ins) running on CONTAINER as
    the unit onebox-test-receiver, listening on 127.0.0.1:9099 and :2525;
    FRESH: restarted with no message kept. A receiver already up is kept."""
    if fresh:
        target.run("systemctl stop onebox-test-receiver")
        target.check_output("rm -rf /var/tmp/receiver")
    elif target.run("ss -ltn | grep -q 127.0.0.1:9099").rc == 0:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(["docker", "cp", os.path.join(here, "receiver.py"), f"{container}:/var/tmp/"], check=True)
    target.run("systemctl reset-failed onebox-test-receiver")
    target.check_output("systemd-run --unit onebox-test-receiver python3 /var/tmp/receiver.py")
    deadline = time.monotonic() + 20
    while target.run("ss -ltn | grep -q 127.0.0.1:9099").rc and time.monotonic() < deadline:
        time.sleep(0.5)
