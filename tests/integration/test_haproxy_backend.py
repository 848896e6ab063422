"""haproxy_backend against a real HAProxy on loopback (R10, R42)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient, describe_servers
from conftest import HAProxy, run_module, wait_for


def states(proxy):
    servers = describe_servers(RuntimeClient(proxy.socket), "app")
    return {n: s["admin_state"] for n, s in servers.items()}


def switch(proxy, active, **kw):
    args = dict(socket=proxy.socket, backend="app", active=active, **kw)
    return run_module("haproxy_backend", args, check=kw.pop("_check", False))


def test_query_reports_every_server_and_changes_nothing(haproxy):
    rc, res = run_module("haproxy_backend", dict(socket=haproxy.socket, backend="app", state="query"))
    assert rc == 0, res.get("msg", res)
    assert res["changed"] is False
    assert res["active"] == ["blue"]
    blue = res["servers"]["blue"]["after"]
    assert blue["admin_state"] == "ready" and blue["op_state"] == "up" and blue["check_status"] == "L7OK"
    assert res["servers"]["green"]["after"]["admin_state"] == "maint"
    assert res["commands"] == []


def test_query_is_deprecated_for_the_info_module(haproxy):
    rc, res = run_module("haproxy_backend", dict(socket=haproxy.socket, backend="app", state="query"))
    assert rc == 0 and res["active"] == ["blue"]
    # The shape of a deprecation differs between ansible-core releases (2.19 nests the message).
    (notice,) = res["deprecations"]
    assert "haproxy_backend_info" in json.dumps(notice) and notice["version"] == "2.0.0", notice


def test_the_info_module_reads_one_backend_and_changes_nothing(haproxy):
    rc, res = run_module("haproxy_backend_info", dict(socket=haproxy.socket, backend="app"), check=True)
    assert rc == 0, res.get("msg", res)
    assert res["changed"] is False and res["backend"] == "app"
    assert res["active"] == ["blue"] and res["backup"] == [] and res["healthy"] is True
    blue, green = res["servers"]["blue"], res["servers"]["green"]
    assert blue["admin_state"] == "ready" and blue["check_status"] == "L7OK" and blue["backup"] is False
    assert blue["address"].startswith("127.0.0.1:") and green["admin_state"] == "maint"
    # A read: the same state after it.
    assert states(haproxy) == {"blue": "ready", "green": "maint"}


def test_the_info_module_sees_a_live_backup_server_and_an_unhealthy_backend(tmp_path, backends):
    blue, green = backends
    proxy = HAProxy(str(tmp_path), blue, green, backend="app_shop", twins=True)
    try:
        client = RuntimeClient(proxy.socket)
        wait_for(lambda: describe_servers(client, "app_shop")["blue"]["status"] == "UP")
        client.set_commands(["set server app_shop/green_fallback state ready"])
        rc, res = run_module("haproxy_backend_info", dict(socket=proxy.socket))
        assert rc == 0, res.get("msg", res)
        shop = res["backends"]["app_shop"]
        assert shop["active"] == ["blue", "green_fallback"] and shop["backup"] == ["green_fallback"]
        assert shop["servers"]["green_fallback"]["backup"] is True and shop["healthy"] is True
        # Only the backup server left live: not healthy, whatever the backup answers.
        client.set_commands(["set server app_shop/blue state maint"])
        rc, res = run_module("haproxy_backend_info", dict(socket=proxy.socket, backend="app_shop"))
        assert rc == 0 and res["active"] == ["green_fallback"] and res["healthy"] is False
    finally:
        proxy.stop()


def test_the_info_module_names_an_unknown_backend_and_a_missing_socket(haproxy, tmp_path):
    rc, res = run_module("haproxy_backend_info", dict(socket=haproxy.socket, backend="app_nope"))
    assert rc != 0 and "app_nope" in res["msg"]
    missing = str(tmp_path / "none.sock")
    rc, res = run_module("haproxy_backend_info", dict(socket=missing, timeout=1))
    assert rc != 0 and missing in res["msg"]


def test_switch_moves_all_traffic_and_is_idempotent(haproxy):
    assert haproxy.get()[1]["version"] == "v1"
    rc, res = switch(haproxy, ["green"], state_file=haproxy.state_file)
    assert rc == 0, res.get("msg", res)
    assert res["changed"] is True
    assert res["previous_active"] == ["blue"]
    assert res["active"] == ["green"]
    assert res["servers"]["blue"]["after"]["admin_state"] == "maint"
    assert res["servers"]["green"]["after"]["admin_state"] == "ready"
    assert 0 <= res["switch_ms"] < 1000
    assert "set server app/green state ready" in res["commands"]
    assert {haproxy.get()[1]["version"] for _i in range(20)} == {"v2"}
    # Same request again: nothing to do.
    rc, again = switch(haproxy, ["green"])
    assert rc == 0 and again["changed"] is False and again["commands"] == []


def test_check_mode_reports_commands_and_changes_nothing(haproxy):
    rc, res = run_module(
        "haproxy_backend", dict(socket=haproxy.socket, backend="app", active=["green"]), check=True, diff=True
    )
    assert rc == 0, res.get("msg", res)
    assert res["changed"] is True
    assert res["commands"] == [
        "set server app/green state drain",
        "set server app/green state ready",
        "set server app/blue state drain",
        "set server app/blue state maint",
    ]
    assert res["diff"]["before"] == "blue: ready weight=1\ngreen: maint weight=1\n"
    assert res["diff"]["after"] == "blue: maint weight=1\ngreen: ready weight=1\n"
    assert states(haproxy) == {"blue": "ready", "green": "maint"}


def test_refuses_a_failing_server_and_keeps_traffic(haproxy, backends):
    green = backends[1]
    green.health_status = 500
    rc, res = switch(haproxy, ["green"], health_timeout=2)
    assert rc == 1
    assert "refusing to make green live" in res["msg"]
    assert "L7STS" in res["msg"]
    assert "Traffic stays on blue" in res["msg"]
    # Green went back to maintenance; blue still serves.
    assert states(haproxy) == {"blue": "ready", "green": "maint"}
    assert haproxy.get()[1]["version"] == "v1"


def test_stale_check_result_after_maintenance_is_not_trusted(haproxy, backends):
    """Leaving maintenance, HAProxy shows the old L7OK at partial health: a
    dead server must still be refused once fresh checks fail."""
    green = backends[1]
    green.stop()
    rc, res = switch(haproxy, ["green"], health_timeout=2)
    assert rc == 1
    assert "refusing to make green live" in res["msg"]
    assert "L4CON" in res["msg"] or "L4TOUT" in res["msg"]
    assert states(haproxy) == {"blue": "ready", "green": "maint"}


def test_refuses_when_the_live_target_itself_is_down(haproxy, backends):
    blue = backends[0]
    blue.health_status = 503
    client = RuntimeClient(haproxy.socket)
    wait_for(lambda: describe_servers(client, "app")["blue"]["op_state"] == "down")
    rc, res = switch(haproxy, ["blue"], weights={"blue": 10}, health_timeout=1)
    assert rc == 1 and "refusing to make blue live" in res["msg"]


@pytest.mark.parametrize(
    "args,message",
    [
        (dict(backend="nope", active=["green"]), "HAProxy has no backend 'nope'"),
        (dict(backend="app", active=["purple"]), "backend 'app' has no server purple; it has blue, green"),
        (dict(backend="app", active=[]), "'active' is empty"),
        (dict(backend="app", active=["green"], weights={"green": 999}), "weight of green must be 0..256"),
        (dict(backend="app"), "state is active but all of the following are missing: active"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(haproxy, args, message):
    rc, res = run_module("haproxy_backend", dict(socket=haproxy.socket, **args))
    assert rc == 1
    assert message in res["msg"]
    assert states(haproxy) == {"blue": "ready", "green": "maint"}


def test_missing_socket(tmp_path):
    rc, res = run_module("haproxy_backend", dict(socket=str(tmp_path / "none.sock"), backend="app", state="query"))
    assert rc == 1
    assert "does not exist" in res["msg"] and "level admin" in res["msg"]


def test_socket_without_admin_level(haproxy):
    rc, res = run_module("haproxy_backend", dict(socket=haproxy.user_socket, backend="app", active=["green"]))
    assert rc == 1
    assert "level admin" in res["msg"]
    assert states(haproxy) == {"blue": "ready", "green": "maint"}


def test_socket_timeout_is_applied(tmp_path):
    """A socket that accepts and never answers fails after `timeout`."""
    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(5)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        rc, res = run_module("haproxy_backend", dict(socket=path, backend="app", state="query", timeout=1))
        elapsed = time.monotonic() - t0
        assert rc == 1
        assert "did not answer" in res["msg"] and "within 1 s" in res["msg"]
        assert elapsed < 20  # bounded by the 1 s timeout, not hanging
    finally:
        stop.set()
        t.join()
        server.close()
        for c in held:
            c.close()


def test_tcp_socket(haproxy):
    rc, res = run_module(
        "haproxy_backend", dict(socket=f"tcp://127.0.0.1:{haproxy.tcp_port}", backend="app", active=["green"])
    )
    assert rc == 0, res.get("msg", res)
    assert res["active"] == ["green"]


def test_state_survives_a_reload(haproxy):
    rc, res = switch(haproxy, ["green"], state_file=haproxy.state_file)
    assert rc == 0, res.get("msg", res)
    assert os.path.exists(haproxy.state_file)
    haproxy.reload()
    assert states(haproxy) == {"blue": "maint", "green": "ready"}
    wait_for(lambda: describe_servers(RuntimeClient(haproxy.socket), "app")["green"]["status"] == "UP")
    assert haproxy.get()[1]["version"] == "v2"


def test_save_before_reload_keeps_a_change_made_without_state_file(haproxy):
    rc = switch(haproxy, ["green"])[0]
    assert rc == 0
    rc, res = run_module(
        "haproxy_backend", dict(socket=haproxy.socket, backend="app", state="save", state_file=haproxy.state_file)
    )
    assert rc == 0 and res["changed"] is False
    haproxy.reload()
    assert states(haproxy) == {"blue": "maint", "green": "ready"}


def test_save_needs_no_particular_backend(haproxy):
    """The first reload after installing HAProxy runs before the app's backend exists."""
    rc, res = run_module(
        "haproxy_backend", dict(socket=haproxy.socket, backend="not_yet", state="save", state_file=haproxy.state_file)
    )
    assert rc == 0, res.get("msg")
    with open(haproxy.state_file) as fh:
        rows = [line.split() for line in fh if line[:1].isdigit() and len(line.split()) > 4]
    assert {(r[1], r[3]) for r in rows} == {("app", "blue"), ("app", "green")}


def test_without_state_file_a_reload_loses_the_switch(haproxy):
    """Why state_file matters: the config's initial state comes back."""
    rc = switch(haproxy, ["green"])[0]
    assert rc == 0
    os.unlink(haproxy.state_file) if os.path.exists(haproxy.state_file) else None
    haproxy.reload()
    assert states(haproxy)["green"] == "maint"


def test_waits_for_sessions_to_drain_before_maintenance(haproxy):
    result = {}

    def slow():
        try:
            result["status"], result["body"] = haproxy.get("/slow?s=2", timeout=10)
        except (urllib.error.URLError, OSError) as exc:
            result["error"] = repr(exc)

    t = threading.Thread(target=slow)
    t.start()
    client = RuntimeClient(haproxy.socket)
    wait_for(lambda: describe_servers(client, "app")["blue"]["sessions"] > 0)
    rc, res = switch(haproxy, ["green"], drain_timeout=10)
    t.join()
    assert rc == 0, res.get("msg", res)
    assert res["drained_sessions"] == {"blue": 1}
    assert res["drain_ms"] >= 500
    assert res["drain_timed_out"] is False
    assert res["servers"]["blue"]["after"]["admin_state"] == "maint"
    # The long request finished normally on blue.
    assert result.get("status") == 200 and result["body"]["version"] == "v1", result


def test_drain_timeout_leaves_server_draining_and_warns(haproxy):
    result = {}

    def slow():
        result["status"] = haproxy.get("/slow?s=3", timeout=10)[0]

    t = threading.Thread(target=slow)
    t.start()
    client = RuntimeClient(haproxy.socket)
    wait_for(lambda: describe_servers(client, "app")["blue"]["sessions"] > 0)
    rc, res = switch(haproxy, ["green"], drain_timeout=0.5)
    t.join()
    assert rc == 0, res.get("msg", res)
    assert res["drain_timed_out"] is True
    assert res["servers"]["blue"]["after"]["admin_state"] == "drain"
    assert any("outlived drain_timeout" in str(w) for w in res.get("warnings", [])), res.keys()
    assert result["status"] == 200
    # A later run finishes the job.
    rc, res = switch(haproxy, ["green"])
    assert rc == 0 and res["changed"] and states(haproxy)["blue"] == "maint"


class WebSocket:
    """A WebSocket client through HAProxy: the upgrade, then it counts the
    server's "tick" frames until closed."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1024)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.ticks = head.count(b"tick")
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.ticks += data.count(b"tick")

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_drained_waits_for_a_websocket_to_close_across_the_switch(haproxy):
    """A WebSocket opened on blue keeps working after traffic moves to green
    (blue drains); state=drained then waits for it before blue is replaced."""
    ws = WebSocket(haproxy.http_port)
    client = RuntimeClient(haproxy.socket)
    wait_for(lambda: describe_servers(client, "app")["blue"]["sessions"] > 0)
    rc, res = switch(haproxy, ["green"], inactive_state="drain")
    assert rc == 0, res.get("msg", res)
    before = ws.ticks
    time.sleep(1)
    assert ws.ticks > before and not ws.closed, "the tunnel stopped at the switch"
    threading.Timer(1.5, ws.close).start()
    rc, res = run_module(
        "haproxy_backend",
        dict(socket=haproxy.socket, backend="app", state="drained", servers=["blue"], drain_timeout=10),
    )
    assert rc == 0, res.get("msg", res)
    assert res["sessions_left"] == {} and res["drain_timed_out"] is False
    assert res["drain_ms"] >= 1000 and res["changed"] is False


def test_drained_reports_the_sessions_a_replacement_would_cut(haproxy):
    ws = WebSocket(haproxy.http_port)
    try:
        client = RuntimeClient(haproxy.socket)
        wait_for(lambda: describe_servers(client, "app")["blue"]["sessions"] > 0)
        rc, res = switch(haproxy, ["green"], inactive_state="drain")
        assert rc == 0, res.get("msg", res)
        args = dict(socket=haproxy.socket, backend="app", state="drained", servers=["blue"], drain_timeout=1)
        rc, res = run_module("haproxy_backend", args)
        assert rc == 0, res.get("msg", res)
        assert res["sessions_left"] == {"blue": 1} and res["drain_timed_out"] is True
        rc, res = run_module("haproxy_backend", dict(args, servers=["purple"]))
        assert rc == 1 and "has no server purple" in res["msg"]
        assert not ws.closed, "state=drained must change nothing"
    finally:
        ws.close()


def test_maintenance_takes_every_server_out_and_back(haproxy):
    rc, res = run_module(
        "haproxy_backend", dict(socket=haproxy.socket, backend="app", state="maintenance", drain_timeout=5)
    )
    assert rc == 0, res.get("msg")
    assert res["changed"] and res["active"] == []
    assert states(haproxy) == {"blue": "maint", "green": "maint"}
    with pytest.raises(urllib.error.HTTPError) as err:
        haproxy.get("/")
    assert err.value.code == 503
    rc, res = run_module("haproxy_backend", dict(socket=haproxy.socket, backend="app", state="maintenance"))
    assert rc == 0 and res["changed"] is False
    rc, res = switch(haproxy, ["blue"])
    assert rc == 0, res.get("msg")
    assert haproxy.get()[1]["version"] == "v1"


def test_weights_are_set_and_idempotent(haproxy):
    rc, res = switch(haproxy, ["blue"], weights={"blue": 50})
    assert rc == 0 and res["changed"] and res["servers"]["blue"]["after"]["weight"] == 50
    rc, res = switch(haproxy, ["blue"], weights={"blue": 50})
    assert rc == 0 and res["changed"] is False


def test_no_failed_request_during_switches_under_load(haproxy):
    """Constant traffic while switching back and forth: every request answers
    200 (bounded: at most 10 s or 20,000 requests)."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "versions": set()}
    errors = []

    def load():
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline and counts["ok"] + counts["failed"] < 20000:
            try:
                status, body = haproxy.get("/", timeout=5)
                counts["ok" if status == 200 else "failed"] += 1
                counts["versions"].add(body["version"])
            except (urllib.error.URLError, OSError, ValueError) as exc:
                counts["failed"] += 1
                errors.append(repr(exc))

    workers = [threading.Thread(target=load) for _i in range(4)]
    for w in workers:
        w.start()
    try:
        for target in (["green"], ["blue"], ["green"]):
            rc, res = switch(haproxy, target, drain_timeout=5)
            assert rc == 0, res.get("msg", res)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 100
    assert counts["versions"] == {"v1", "v2"}
