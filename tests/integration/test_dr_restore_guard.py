"""onebox-dr on a server with a live app, with a real HAProxy, Docker and
deploy lock: `serving` tells a server with traffic from a new one (what
recover.yml asks first); `maintenance on|off`; and a restore over live data
(restore-volumes here, restore-db and restore-redis take the same path)
holds the app's deploy lock and shows its maintenance page meanwhile, and
gives both back, also when it fails; a lock another run holds refuses it,
with nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import release_log
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient, describe_servers
from conftest import HAPROXY_CFG, ROOT, Backend, free_port, wait_for

IMAGE = "local/debian:bookworm"  # scripts/images.sh base
PROGRAM = os.path.join(ROOT, "roles", "offsite", "files", "onebox_dr.py")
LIB = os.path.join(ROOT, "plugins", "module_utils")
# The program as installed, with the app's state and settings under the test's directory.
WRAPPER = """
import importlib.util, sys
lib, state, etc, program = sys.argv[1:5]
sys.path.append(lib)
import apps
apps.STATE_ROOT, apps.CONFIG_ROOT = state, etc
spec = importlib.util.spec_from_file_location("onebox_dr", program)
dr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dr)
sys.exit(dr.main(sys.argv[5:]))
"""


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout.strip()


class Server:
    """One web app NAME live on blue behind a real HAProxy (backend app_NAME),
    its container NAME-blue running, its history saying so, a named volume."""

    def __init__(self, tmp_path):
        if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
            pytest.fail(f"{IMAGE} is missing: run scripts/images.sh base")
        self.tmp = tmp_path
        self.name = f"dr{uuid.uuid4().hex[:8]}"
        self.state, self.etc = tmp_path / "state", tmp_path / "etc"
        (self.state / self.name).mkdir(parents=True)
        (self.etc / self.name).mkdir(parents=True)
        self.blue, self.green = Backend("v1"), Backend("v2")
        self.backend = f"app_{self.name}"
        (tmp_path / "haproxy.cfg").write_text(
            HAPROXY_CFG.format(
                dir=tmp_path,
                tcp_port=free_port(),
                http_port=free_port(),
                blue_port=self.blue.port,
                green_port=self.green.port,
                green_initial="disabled",
                backend=self.backend,
                twins="",
            )
        )
        subprocess.run(["haproxy", "-f", str(tmp_path / "haproxy.cfg"), "-D"], check=True, capture_output=True)
        self.socket = str(tmp_path / "admin.sock")
        self.client = RuntimeClient(self.socket)
        wait_for(lambda: self.servers()["blue"]["status"] == "UP", timeout=30)
        docker("run", "-d", "--name", f"{self.name}-blue", "--label", "onebox_version=v1", IMAGE, "sleep", "600")
        self.volume = f"onebox_{self.name}_uploads"
        docker("volume", "create", self.volume)
        release_log.append_release(
            str(self.state / self.name / "releases.jsonl"), {"action": "deploy", "version": "v1", "colour": "blue"}
        )
        self.config = tmp_path / "offsite.json"
        self.config.write_text(
            json.dumps(
                {
                    "repository": str(tmp_path / "repo"),
                    "password_file": str(tmp_path / "password"),
                    "haproxy_socket": self.socket,
                    "haproxy_state_file": str(tmp_path / "server-state"),
                    "drain_timeout": 2,
                    "health_timeout": 20,
                    "apps": [{"name": self.name, "kind": "web", "volumes": [self.volume], "database_container": ""}],
                }
            )
        )

    def servers(self):
        return describe_servers(self.client, self.backend)

    def dr(self, *args):
        proc = self.run_dr(*args)
        return proc.returncode, proc.stdout + proc.stderr

    def run_dr(self, *args):
        env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER",)}
        return subprocess.run(
            [sys.executable, "-c", WRAPPER, LIB, str(self.state), str(self.etc), PROGRAM, "--config", str(self.config)]
            + list(args),
            capture_output=True,
            text=True,
            env=dict(env, USER="tester"),
            timeout=300,
            check=False,
        )

    def audit(self):
        return release_log.read_audit(str(self.state / self.name / "audit.log"))

    def stop(self):
        with open(self.tmp / "haproxy.pid") as fh:
            os.kill(int(fh.read().split()[0]), 15)
        self.blue.stop()
        self.green.stop()
        docker("rm", "-f", f"{self.name}-blue", check=False)
        docker("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture
def server(tmp_path):
    box = Server(tmp_path)
    yield box
    box.stop()


def test_a_server_with_a_running_release_serves_and_a_new_one_does_not(server, tmp_path):
    rc, out = server.dr("serving")
    assert rc == 0, out
    seen = json.loads(out)
    assert seen["serving"] is True
    assert seen["reasons"] == [f"{server.name}: its last release v1 runs ({server.name}-blue)"]
    # The container stopped, HAProxy still sends its requests there: still serving.
    docker("stop", "-t", "1", f"{server.name}-blue")
    import urllib.request

    port = int((tmp_path / "haproxy.cfg").read_text().split("bind 127.0.0.1:")[1].split()[0])
    for _request in range(3):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    rc, out = server.dr("serving")
    assert json.loads(out)["serving"] is True and "HAProxy sends its traffic to blue" in out, out
    # A new server: no settings, no history, no HAProxy.
    (tmp_path / "fresh").mkdir()
    server.state, server.config = tmp_path / "fresh", tmp_path / "fresh" / "offsite.json"
    rc, out = server.dr("serving")
    assert rc == 0 and json.loads(out) == {"apps": [], "reasons": [], "serving": False}, out


def test_a_torn_history_line_is_reported_and_serving_still_answers(server):
    """A write cut short at the end of releases.jsonl (a full disk, a killed
    deploy): onebox-dr says so on stderr and reads the rest."""
    with open(server.state / server.name / "releases.jsonl", "ab") as fh:
        fh.write(b'{"version": "v2", "colo')
    proc = server.run_dr("serving")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["serving"] is True
    assert "onebox-dr: warning:" in proc.stderr and "torn line" in proc.stderr, proc.stderr


def test_maintenance_on_and_off(server):
    rc, out = server.dr("maintenance", "on")
    assert rc == 0, out
    assert json.loads(out)["apps"] == {server.name: "blue"}
    assert server.servers()["blue"]["admin_state"] == "maint"
    assert (server.state / server.name / "maintenance-colour").read_text().strip() == "blue"
    # Again: already in maintenance, nothing to do.
    assert json.loads(server.dr("maintenance", "on")[1])["apps"] == {}
    rc, out = server.dr("maintenance", "off")
    assert rc == 0, out
    assert server.servers()["blue"]["admin_state"] == "ready"
    assert not (server.state / server.name / "maintenance-colour").exists()
    actions = [release_log.parse_audit_line(x).action for x in server.audit()]
    assert actions == ["maintenance-on", "maintenance-off"]
    assert "by=tester@" in server.audit()[0]


def fetched(server, tmp_path, files=True):
    """A fetched copy holding the app's volume (a restore-volumes input)."""
    dest = tmp_path / "recover"
    root = dest / "files"
    (root / "vol").mkdir(parents=True)
    if files:
        (root / "vol" / "photo.jpg").write_bytes(b"restored")
    manifest = {"root": str(root), "volumes": {server.volume: "/vol" if files else "/missing"}, "redis": []}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_a_restore_over_live_data_holds_the_lock_and_maintenance_and_gives_both_back(server, tmp_path):
    dest = fetched(server, tmp_path)
    rc, out = server.dr("restore-volumes", str(dest))
    assert rc == 0, out
    done = json.loads(out)
    assert done["locked"] == [server.name] and done["maintenance"] == [server.name]
    mount = docker("volume", "inspect", "-f", "{{.Mountpoint}}", server.volume)
    with open(os.path.join(mount, "photo.jpg"), "rb") as fh:
        assert fh.read() == b"restored"
    # Both given back: traffic on blue again, no lock, no maintenance file.
    assert server.servers()["blue"]["admin_state"] == "ready"
    assert not (server.state / server.name / "deploy.lock").exists()
    assert not (server.state / server.name / "maintenance-colour").exists()
    details = [release_log.parse_audit_line(x) for x in server.audit()]
    assert [(e.action, e.detail) for e in details] == [
        ("maintenance-on", "via=onebox-dr restore-volumes"),
        ("maintenance-off", "via=onebox-dr restore-volumes"),
    ]


def test_a_restore_that_fails_still_gives_both_back(server, tmp_path):
    dest = fetched(server, tmp_path, files=False)
    rc, out = server.dr("restore-volumes", str(dest))
    assert rc == 1, out
    assert server.servers()["blue"]["admin_state"] == "ready"
    assert not (server.state / server.name / "deploy.lock").exists()
    assert not (server.state / server.name / "maintenance-colour").exists()


def test_a_lock_another_run_holds_refuses_the_restore_with_nothing_changed(server, tmp_path):
    dest = fetched(server, tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ansible-playbook"])
    try:
        lock = server.state / server.name / "deploy.lock"
        lock.mkdir()
        (lock / "holder.json").write_text(
            json.dumps(
                {
                    "owner": "carol",
                    "version": "deploy v2",
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "controller": os.uname().nodename,
                    "pid": sleeper.pid,
                    "id": "abc123",
                    "token": "t",
                }
            )
        )
        rc, out = server.dr("restore-volumes", str(dest))
        assert rc == 1
        assert "held by carol" in out and "Nothing was changed" in out, out
        mount = docker("volume", "inspect", "-f", "{{.Mountpoint}}", server.volume)
        assert not os.path.exists(os.path.join(mount, "photo.jpg"))
        assert server.servers()["blue"]["admin_state"] == "ready"
        assert json.loads((lock / "holder.json").read_text())["owner"] == "carol"
        assert server.audit() == []
    finally:
        sleeper.kill()
        sleeper.wait()
