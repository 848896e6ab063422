"""Zero downtime, proven (SPEC R41): every deploy, failed deploy and rollback
runs under constant HTTP load through HAProxy, and every request is counted.

The tests run in file order and build on each other, like a real history:
v1, v2, a broken v3, a v4 that dies after the switch, two rollbacks, a
locked deploy and a killed one. Load goes only to the target container.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import TARGET
from onebox_molecule import PROJECT, ansible_env, get_json, one_line, playbook_argv, run_playbook
from onebox_molecule import Load as SharedLoad

HOST = "demo.test"
# site.yml's HAProxy part alone, for the tests that change an HAProxy setting.
HAPROXY_PLAY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "haproxy.yml"
)
RESULTS = os.path.join(PROJECT, "tests", "output", "deploy-load.json")


def play(name, *extra, background=False):
    """Run a playbook of the project on the target (as user molecule);
    returns (rc, output on one line, seconds), or the Popen with background."""
    env = ansible_env(ONEBOX_WHO="molecule")
    if background:
        return subprocess.Popen(
            playbook_argv(name, *extra),
            env=env,
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    t0 = time.monotonic()
    proc = run_playbook(name, *extra, ONEBOX_WHO="molecule")
    return proc.returncode, one_line(proc), round(time.monotonic() - t0, 1)


def get(base_url, path="/"):
    return get_json(base_url, HOST, path)


def Load(base_url, **kw):
    """The shared load (molecule/shared) on the demo app's Host."""
    return SharedLoad(base_url, HOST, **kw)


def record(step, load, seconds, rc, extra=None):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    data = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as fh:
            data = json.load(fh)
    data[step] = dict(
        total=load.total, failed=load.failed, versions=load.versions, seconds=seconds, rc=rc, **(extra or {})
    )
    with open(RESULTS, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    print(f"{step}: {load.failed} failed of {load.total} requests, {seconds} s, versions {load.versions}")


def only_version(base_url, n=30):
    return {get(base_url)[1]["version"] for _i in range(n)}


def releases(target):
    return [json.loads(line) for line in target.check_output("cat /var/lib/onebox/demo/releases.jsonl").splitlines()]


def test_first_deploy_v1(base_url):
    rc, out, seconds = play("deploy.yml", "-e", "app_version=v1")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v1"}
    print(f"first deploy: {seconds} s")


def test_the_app_sees_the_client_address_not_a_forged_one(base_url):
    """HAProxy sets X-Forwarded-For to the address it saw, replacing what the
    client sent, and X-Forwarded-Proto to the scheme."""
    req = urllib.request.Request(base_url + "/cgi-bin/headers", headers={"Host": HOST, "X-Forwarded-For": "6.6.6.6"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        seen = json.loads(resp.read())
    assert "6.6.6.6" not in seen["x_forwarded_for"], seen
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", seen["x_forwarded_for"]), seen
    assert seen["x_forwarded_proto"] == "http"


def test_deploy_v2_under_load_drops_nothing(base_url, target):
    with Load(base_url) as load:
        rc, out, seconds = play("deploy.yml", "-e", "app_version=v2")
    record("deploy v1->v2", load, seconds, rc, {"switch_ms": releases(target)[-1]["switch_ms"]})
    assert rc == 0, out[-3000:]
    assert load.failed == 0, load.errors[:5]
    assert load.total > 500
    assert set(load.versions) == {"v1", "v2"}
    assert only_version(base_url) == {"v2"}
    # After a deploy, the release it left stands behind it for a while,
    # and the history says since when.
    live = releases(target)[-1]
    assert ready_twins(target) == [f"{live['previous_colour']}_fallback"], servers_state(target)
    assert live["switched_at"].endswith("Z")


def test_the_timer_takes_the_backup_server_out_when_its_time_is_up(target):
    """onebox-fallback.service, as its timer starts it: the backup server the
    deploy above left stays while fallback_seconds (300) runs, and goes once
    it is up (here: the app's setting lowered to 1 s), with an audit line."""
    twins = ready_twins(target)
    assert len(twins) == 1, servers_state(target)
    target.check_output("systemctl start onebox-fallback.service")
    assert ready_twins(target) == twins
    settings = "/etc/onebox/demo/app.json"
    target.check_output(f"cp -p {settings} {settings}.test")
    try:
        target.check_output(f"""sed -i 's/"fallback_seconds": "\\?[0-9]*"\\?/"fallback_seconds": 1/' {settings}""")
        assert '"fallback_seconds": 1' in target.check_output(f"cat {settings}")
        time.sleep(2)
        target.check_output("systemctl start onebox-fallback.service")
    finally:
        target.check_output(f"mv {settings}.test {settings}")
    assert ready_twins(target) == [], servers_state(target)
    audit = target.check_output("tail -n 3 /var/lib/onebox/demo/audit.log")
    assert f"fallback-off servers={twins[0]}" in audit, audit


def test_broken_v3_never_gets_traffic(base_url):
    with Load(base_url) as load:
        rc, out, seconds = play("deploy.yml", "-e", "app_version=v3", "-e", "app_deploy_timeout=10")
    record("deploy broken v3", load, seconds, rc)
    assert rc != 0
    assert (
        "Deploy of demo v3 failed at 'Wait until the new version answers on" in out and "not healthy within 10 s" in out
    )
    assert load.failed == 0, load.errors[:5]
    assert set(load.versions) == {"v2"}
    assert only_version(base_url) == {"v2"}


def test_v4_failing_after_the_switch_is_switched_back(base_url, target):
    """v4 is healthy, takes traffic, then its health endpoint dies (15 s
    after start): the verification window catches it and traffic goes back
    to v2, which was left draining and so is ready at once."""
    with Load(base_url) as load:
        rc, out, seconds = play("deploy.yml", "-e", "app_version=v4", "-e", "app_verify_seconds=30")
    record("deploy v4 failing verification", load, seconds, rc)
    assert rc != 0
    assert "failed after the switch" in out and "Traffic is back on" in out and "(v2)" in out
    assert load.failed == 0, load.errors[:5]
    assert load.versions.get("v4", 0) > 0, "v4 never took traffic: the switch-back path was not exercised"
    assert only_version(base_url) == {"v2"}
    assert "switch-back" in target.check_output("cat /var/lib/onebox/demo/audit.log")


def test_rollback_redeploys_the_previous_release(base_url, target):
    """Live v2; the standby colour runs the dead v4, so going back to v1
    means starting v1 first."""
    with Load(base_url) as load:
        rc, out, seconds = play("rollback.yml")
    record("rollback v2->v1 (redeploy)", load, seconds, rc, {"switch_ms": releases(target)[-1]["switch_ms"]})
    assert rc == 0, out[-3000:]
    assert "from v2 to v1: starting it on" in out
    assert load.failed == 0, load.errors[:5]
    assert only_version(base_url) == {"v1"}
    assert ready_twins(target) == [], servers_state(target)


def test_rolling_back_twice_does_not_roll_forward(base_url):
    """v2 was rolled back (to v1): a second plain rollback must not bring v2
    back; it is refused, naming how to choose a release."""
    rc, out, _s = play("rollback.yml")
    assert rc != 0
    assert "no release before v1 that was not itself rolled back" in out and "rollback_to=VERSION" in out
    assert only_version(base_url) == {"v1"}


def test_rollback_to_the_standby_colour_is_one_switch(base_url, target):
    with Load(base_url) as load:
        rc, out, seconds = play("rollback.yml", "-e", "rollback_to=v2")
    last = releases(target)[-1]
    record("rollback v1->v2 (standby)", load, seconds, rc, {"switch_ms": last["switch_ms"]})
    assert rc == 0, out[-3000:]
    assert "standby colour" in out and "one switch" in out
    assert load.failed == 0, load.errors[:5]
    assert only_version(base_url) == {"v2"}
    assert last["action"] == "rollback" and last["version"] == "v2"
    assert float(last["switch_ms"]) < 1000
    # Nothing stands behind a rollback: the backup server would be v1, the
    # release just rolled back from (issue 24). The timer that takes out
    # backup servers past their time runs.
    assert ready_twins(target) == [], servers_state(target)
    assert target.service("onebox-fallback.timer").is_running


def test_rollback_to_an_unknown_version_changes_nothing(base_url):
    rc, out, _s = play("rollback.yml", "-e", "rollback_to=v99")
    assert rc != 0 and "version v99 is not in the release history" in out
    assert only_version(base_url) == {"v2"}


def test_a_second_deploy_is_refused_while_one_holds_the_lock(base_url, target):
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=f"{PROJECT}/.ansible/collections", ANSIBLE_NOCOLOR="1")
    taken = subprocess.run(
        [
            "ansible",
            "-i",
            inventory,
            TARGET,
            "-b",
            "-m",
            "onebox.platform.deploy_lock",
            "-a",
            "path=/var/lib/onebox/demo/deploy.lock owner=alice version=v9 reason=hotfix",
        ],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert taken.returncode == 0, taken.stdout + taken.stderr
    try:
        rc, out, _s = play("deploy.yml", "-e", "app_version=v1")
        assert rc != 0
        assert "held by alice" in out and "deploying v9" in out and "(hotfix)" in out
        assert only_version(base_url) == {"v2"}
        # The refused run did not release alice's lock.
        assert target.file("/var/lib/onebox/demo/deploy.lock/holder.json").exists
    finally:
        target.run("rm -rf /var/lib/onebox/demo/deploy.lock")


def test_a_killed_deploy_then_rerun_converges(base_url, target):
    with Load(base_url) as load:
        proc = play("deploy.yml", "-e", "app_version=v1", background=True)
        # Kill it midway: once it holds the lock and is into its steps
        # (backup, image, new container), before it records anything.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and target.run("test -d /var/lib/onebox/demo/deploy.lock").rc != 0:
            time.sleep(0.2)
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert target.run("test -d /var/lib/onebox/demo/deploy.lock").rc == 0, "the killed run left no lock"
        rc, out, _s = play("deploy.yml", "-e", "app_version=v1")
        # Refused without the explicit variable, naming the dead holder.
        assert rc != 0 and "held by molecule" in out and "deploy_break_lock=true" in out
        rc, out, seconds = play("deploy.yml", "-e", "app_version=v1", "-e", "deploy_break_lock=true")
    record("killed deploy, re-run with deploy_break_lock", load, seconds, rc)
    assert rc == 0, out[-3000:]
    assert "broke a stale deploy lock held by molecule" in out
    assert load.failed == 0, load.errors[:5]
    assert only_version(base_url) == {"v1"}
    assert target.run("test -d /var/lib/onebox/demo/deploy.lock").rc != 0


def test_pre_deploy_backups_are_verified_and_recorded(target):
    listing = target.check_output("ls /var/backups/onebox/demo")
    dumps = [n for n in listing.split() if n.startswith("predeploy-demo-") and n.endswith(".dump")]
    assert dumps, listing
    check = target.run(f"cd /var/backups/onebox/demo && sha256sum -c {dumps[-1]}.sha256")
    assert check.rc == 0, check.stdout + check.stderr
    recorded = [r["backup"] for r in releases(target) if r["action"] == "deploy"]
    assert all(b.startswith("/var/backups/onebox/demo/predeploy-demo-") for b in recorded)


def test_history_and_audit_trail(target):
    actions = [(r["action"], r["version"]) for r in releases(target)]
    assert actions == [
        ("deploy", "v1"),
        ("deploy", "v2"),
        ("rollback", "v1"),
        ("rollback", "v2"),
        ("deploy", "v1"),
    ]
    audit = target.check_output("cat /var/lib/onebox/demo/audit.log")
    for word in ("deploy-start", "deploy-ok", "deploy-failed", "switch-back", "rollback-ok", "by=molecule"):
        assert word in audit


def test_maintenance_mode_serves_the_page_and_comes_back(base_url):
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=on")
    assert rc == 0, out[-3000:]
    req = urllib.request.Request(base_url + "/", headers={"Host": HOST})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 503
    assert b"Back soon" in err.value.read()
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v1"}


def status_of(base_url, path="/"):
    req = urllib.request.Request(base_url + path, headers={"Host": HOST})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_deploy_during_maintenance_keeps_it_and_is_what_comes_back(base_url, target):
    """maintenance=on, deploy v2 (say, for a migration), maintenance=off:
    the site stays down through the deploy, and v2 - the release the history
    records - is what comes back (before: v1 came back on v2's schema, and
    the deploy ended maintenance early)."""
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=on")
    assert rc == 0, out[-3000:]
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    assert "the site stays in maintenance" in out
    assert status_of(base_url) == 503
    last = releases(target)[-1]
    assert last["version"] == "v2" and last["previous_version"] == "v1", last
    assert target.check_output("cat /var/lib/onebox/demo/maintenance-colour").strip() == last["colour"]
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v2"}
    assert not target.file("/var/lib/onebox/demo/maintenance-colour").exists
    # Not in maintenance any more: off again changes nothing.
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0 and "is not in maintenance" in out, out[-3000:]


def test_a_failing_post_deploy_hook_leaves_the_release_live_with_a_warning(base_url, target, tmp_path):
    """The switch happened and was verified: a hook (or image prune) that
    fails afterwards is a warning, not a FAILED deploy (the webhook and the
    exit code used to say FAILED while the new version served)."""
    hook = tmp_path / "post.yml"
    hook.write_text("- name: A post-deploy step that fails\n  ansible.builtin.fail:\n    msg: cache warm-up failed\n")
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2", "-e", f"deploy_post_tasks={hook}")
    assert rc == 0, out[-3000:]
    assert "WARNING: demo v2 is live, but 'A post-deploy step that fails' failed after v2 went live" in out
    assert "cache warm-up failed" in out
    assert only_version(base_url) == {"v2"}
    assert releases(target)[-1]["version"] == "v2"
    assert "deploy-warning version=v2" in target.check_output("cat /var/lib/onebox/demo/audit.log")


class KeepAlive:
    """One client that keeps its connection open and sends a request every
    50 ms, as browsers and API clients do; bounded to 5 minutes."""

    def __init__(self, base_url):
        self.host = base_url.split("://", 1)[1]
        self.ok = 0
        self.failed = 0
        self.errors = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)

    def _work(self):
        conn = http.client.HTTPConnection(self.host, 80, timeout=10)
        deadline = time.monotonic() + 300
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", "/", headers={"Host": HOST})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                self.failed += 1
                self.errors.append(repr(exc)[:200])
                conn.close()
                conn = http.client.HTTPConnection(self.host, 80, timeout=10)
            time.sleep(0.05)
        conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()


def long_request(base_url, seconds, into, method="GET"):
    """METHOD /cgi-bin/slow?SECONDS in a thread; its status (or error) lands in INTO."""

    def run():
        req = urllib.request.Request(
            f"{base_url}/cgi-bin/slow?{seconds}",
            headers={"Host": HOST},
            method=method,
            data=b"upload" if method == "POST" else None,
        )
        try:
            with urllib.request.urlopen(req, timeout=seconds + 60) as resp:
                into["status"], into["body"] = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            into["status"] = exc.code
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            into["error"] = repr(exc)[:200]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1)  # in flight on the live colour
    return t


def websocket(base_url, seconds, into):
    """A WebSocket client (RFC 6455, by hand) on /cgi-bin/ws?SECONDS, in a
    thread: the app pushes {"version", "n"} once a second and closes. INTO
    gets the handshake's check, the messages and how it ended (close/eof/error)."""

    def recv_exact(sock, buf, n):
        while len(buf) < n:
            chunk = sock.recv(4096)
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def run():
        key = base64.b64encode(os.urandom(16)).decode()
        into["messages"] = []
        try:
            sock = socket.create_connection((base_url.split("://", 1)[1], 80), timeout=seconds + 60)
            sock.sendall(
                f"GET /cgi-bin/ws?{seconds} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf = recv_exact(sock, buf, len(buf) + 1)
            head, buf = buf.split(b"\r\n\r\n", 1)
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            into["upgraded"] = head.startswith(b"HTTP/1.1 101") and accept in head.decode()
            while True:
                buf = recv_exact(sock, buf, 2)
                opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
                buf = recv_exact(sock, buf, 2 + length)
                payload, buf = buf[2 : 2 + length], buf[2 + length :]
                if opcode == 8:
                    into["end"] = "close"
                    break
                into["messages"].append(json.loads(payload))
            sock.close()
        except EOFError:
            into["end"] = "eof"
        except (OSError, ValueError) as exc:
            into["end"] = f"error {exc!r}"[:200]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1)
    return t


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_long_requests_outlive_back_to_back_deploys_and_a_rollback(base_url, target):
    """A request (and a WebSocket) that began before a switch keeps running on the drained
    colour; the NEXT deploy, which replaces that colour, waits for it
    (app_drain_timeout) instead of cutting it with a 502. Keep-alive clients
    and the usual load see no failure."""
    first, second, ws = {}, {}, {}
    with Load(base_url) as load, KeepAlive(base_url) as keep:
        t1 = long_request(base_url, 25, first)
        tw = websocket(base_url, 25, ws)
        rc1, out1, s1 = play("deploy.yml", "-e", "app_version=v1")
        rc2, out2, s2 = play("deploy.yml", "-e", "app_version=v2")
        t2 = long_request(base_url, 15, second)
        rc3, out3, s3 = play("rollback.yml")
        t1.join(90)
        t2.join(90)
        tw.join(90)
    record("long requests across deploy, deploy, rollback", load, s1 + s2 + s3, max(rc1, rc2, rc3))
    assert rc1 == 0, out1[-3000:]
    assert rc2 == 0, out2[-3000:]
    assert rc3 == 0, out3[-3000:]
    assert first.get("status") == 200 and first["body"]["version"] == "v2", first
    assert second.get("status") == 200 and second["body"]["version"] == "v2", second
    # The WebSocket opened on v2 stayed open through both deploys and the rollback.
    assert ws.get("upgraded") and ws.get("end") == "close", ws
    assert [m["n"] for m in ws["messages"]] == list(range(1, 26)), ws
    assert {m["version"] for m in ws["messages"]} == {"v2"}, ws
    assert "outlived app_drain_timeout" not in out2
    assert load.failed == 0, load.errors[:5]
    assert keep.failed == 0 and keep.ok > 100, (keep.ok, keep.errors[:5])
    assert only_version(base_url) == {"v1"}


def test_a_request_longer_than_the_drain_timeout_is_cut_and_reported(base_url, target):
    """A POST (an upload, say) longer than app_drain_timeout is cut when its
    colour is replaced, and the cut is reported. (A GET cut that way is
    retried by HAProxy on the live colour - retry-on empty-response - and
    answers after all: an earlier run of this test saw exactly that.)"""
    held = {}
    # Longer than two deploys on a busy machine (haproxy_timeout_server: 180s here).
    t = long_request(base_url, 150, held, method="POST")
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    live_before = releases(target)[-1]["previous_colour"]
    rc, out, _s = play("deploy.yml", "-e", "app_version=v1", "-e", "app_drain_timeout=3")
    assert rc == 0, out[-3000:]
    t.join(200)
    assert f"WARNING: 1 session(s) on {live_before} outlived app_drain_timeout=3s" in out, out[-3000:]
    audit = target.check_output("cat /var/lib/onebox/demo/audit.log")
    assert f"drain-timeout colour={live_before} sessions_cut=1 after=3s" in audit
    assert held.get("status") != 200, held
    assert only_version(base_url) == {"v1"}


def test_a_crash_right_after_the_switch_falls_back_at_once(base_url, target):
    """The new version's container is killed during the verification window.
    HAProxy marks it down on the first refused connection, retries the
    request on the previous colour (kept behind the live one as a backup
    server) and serves from there until the verification switches back and
    fails loudly. Only requests in flight inside the killed process may fail
    (before: about 15 over 3 s, until Ansible switched back)."""
    with Load(base_url) as load, KeepAlive(base_url) as keep:
        proc = play("deploy.yml", "-e", "app_version=v2", "-e", "app_verify_seconds=20", background=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and load.versions.get("v2", 0) == 0:
            time.sleep(0.1)
        labels = '{{index .Config.Labels "onebox_version"}}'
        new_colour = next(
            c for c in ("blue", "green") if target.run(f"docker inspect -f '{labels}' demo-{c}").stdout.strip() == "v2"
        )
        time.sleep(1)
        killed_at = load.total
        target.check_output(f"docker kill demo-{new_colour}")
        out = proc.communicate(timeout=300)[0].decode()
    out = " ".join(out.split())
    record("crash after the switch", load, 0, proc.returncode, {"killed_after_requests": killed_at})
    keep_total = keep.ok + keep.failed
    print(f"crash after the switch: {load.failed} failed of {load.total}; keep-alive {keep.failed} of {keep_total}")
    assert proc.returncode != 0 and "failed after the switch" in out and "Traffic is back on" in out, out[-3000:]
    assert load.versions.get("v2", 0) > 0, "v2 never took traffic: nothing was exercised"
    assert load.failed <= load.threads, (load.failed, load.errors[:8])
    assert keep.failed <= 1, keep.errors[:5]
    assert only_version(base_url) == {"v1"}


def test_an_haproxy_reload_waits_for_a_deploy_in_progress(base_url, target):
    """Changing an HAProxy setting (site.yml's haproxy role) reloads it only once the deploy
    lock is free, so a reload never races a switch. Keep-alive clients run
    throughout; their failures on the reload are recorded (HAProxy 2.6 has
    no idle-close-on-response: close-spread-time only spreads the closes)."""
    target.check_output(
        "mkdir -p /var/lib/onebox/demo/deploy.lock && echo "
        """'{"owner": "alice", "version": "v9", "since": "2026-01-01T00:00:00+00:00"}' """
        "> /var/lib/onebox/demo/deploy.lock/holder.json"
    )
    released = {}

    def release():
        """Once the new haproxy.cfg is written (the reload is due), hold the
        lock 10 s more, then release it as a finishing deploy would."""
        deadline = time.monotonic() + 400
        while target.run("grep -q 'close-spread-time 4s' /etc/haproxy/haproxy.cfg").rc != 0:
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        time.sleep(10)
        released["at"] = float(target.check_output("date +%s.%N"))
        target.check_output("rm -rf /var/lib/onebox/demo/deploy.lock")

    since = target.check_output("date +%s").strip()
    timer = threading.Thread(target=release, daemon=True)
    with Load(base_url) as load, KeepAlive(base_url) as keep:
        timer.start()
        rc, out, seconds = play(HAPROXY_PLAY, "-e", "haproxy_close_spread_time=4s")
        timer.join()
    record("site.yml reload under keep-alive load", load, seconds, rc, {"keepalive_failed": keep.failed})
    print(f"reload: {load.failed} of {load.total} failed; keep-alive {keep.failed} of {keep.ok + keep.failed}")
    assert rc == 0, out[-3000:]
    assert "Wait for deploys in progress" in out
    journal = target.check_output(f"journalctl -u haproxy -o short-unix --since @{since} --no-pager")
    reloads = [float(line.split()[0]) for line in journal.splitlines() if "Reloaded" in line or "Reloading" in line]
    assert reloads, journal[-2000:]
    assert min(reloads) >= released["at"], (reloads, released)
    assert target.run("test -d /var/lib/onebox/demo/deploy.lock").rc != 0, "the reload did not release the lock"
    assert load.failed == 0, load.errors[:5]
    assert only_version(base_url) == {"v1"}


def ready_twins(target, backend="app_demo"):
    """The backup servers (<colour>_fallback) HAProxy may send traffic to."""
    return sorted(
        n for n, (_op, admin) in servers_state(target, backend).items() if n.endswith("_fallback") and is_ready(admin)
    )


def servers_state(target, backend="app_demo"):
    """HAProxy's own view over the Runtime API: {server: (op_state, admin_state)};
    op_state 2 = up, 0 = down; admin_state is a bit field (see live())."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
        f"s.sendall(b'show servers state {backend}\\n'); print(s.makefile().read())"
    )
    out = target.check_output(f'python3 -c "{script}"')
    state = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == backend:
            state[fields[3]] = (int(fields[5]), int(fields[6]))
    return state


def is_ready(admin_state):
    """Ready for traffic: no forced/inherited/resolution/health maintenance
    (0x01 0x02 0x20 0x40) and no drain (0x08 0x10). The 0x04 bit only says the
    configuration started the server disabled; a switch made it ready since."""
    return not admin_state & (0x01 | 0x02 | 0x20 | 0x40 | 0x08 | 0x10)


def test_a_slow_health_check_cuts_no_session(base_url, target):
    """The only live server stops answering new connections for a while (its
    accepting process frozen: a stuck event loop, a long GC pause) while the
    requests it is already serving go on. Its health checks time out
    (timeout check), HAProxy marks it down - and the requests already on it
    are NOT killed (no on-marked-down shutdown-sessions): they finish. They
    are uploads (POST), which HAProxy does not retry elsewhere, so a cut one
    would fail."""
    state = servers_state(target)
    live = [n for n, (_op, admin) in state.items() if is_ready(admin) and not n.endswith("_fallback")]
    assert len(live) == 1, state
    init = target.check_output(f"docker inspect -f '{{{{.State.Pid}}}}' demo-{live[0]}").strip()
    # busybox httpd: the process that accepts (a child of the container's
    # init); each connection is served by a forked child, which keeps going.
    acceptor = target.check_output(f"pgrep -P {init} -x httpd").split()[0]
    held = [{} for _i in range(4)]
    # 40 s each, started 1 s apart: still running when the server is marked down (~20 s).
    threads = [long_request(base_url, 40, into, method="POST") for into in held]
    target.check_output(f"kill -STOP {acceptor}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and servers_state(target)[live[0]][0] != 0:
            time.sleep(1)
        marked_down = servers_state(target)[live[0]][0] == 0
        for t in threads:
            t.join(120)
    finally:
        target.check_output(f"kill -CONT {acceptor}")
    assert marked_down, "the frozen server was never marked down: nothing was exercised"
    assert all(h.get("status") == 200 for h in held), held
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and servers_state(target)[live[0]][0] != 2:
        time.sleep(1)
    assert only_version(base_url) == {"v1"}


# A deploy that verifies over HTTPS behind the redirect (before: every deploy
# failed on the 301) is the platform scenario's: its inventory serves ACME
# certificates with the redirect on, and every deploy there verifies through it
# (test_10_site checks the 301 itself).
