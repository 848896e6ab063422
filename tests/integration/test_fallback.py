"""HAProxy's backup server behind the live colour (issue 24, item 3), with
real HAProxy, the on-server onebox program and Docker containers naming
each colour's version: after a rollback the release rolled back from never
takes the traffic, and `onebox fallbacks` (onebox-fallback.timer) takes a
backup server out when its time after the deploy is up, or when it stands
behind a release it must not. And what a script reads of a web app (item
2): `onebox status --json` and its exit code as HAProxy sees the app
(healthy, degraded on its backup server, down), `onebox logs`."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import apps, release_log
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient, Switch, describe_servers
from conftest import Backend, HAProxy, wait_for
from test_onebox_cli import IMAGE, docker, onebox


def stamp(seconds_ago):
    return time.strftime(release_log.STAMP, time.gmtime(time.time() - seconds_ago))


@pytest.fixture
def web(tmp_path):
    """A web app after a deploy: blue ran v1, green runs v2 and is live,
    blue_fallback (v1) stands behind it, as the deploy's switch leaves it."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        pytest.fail(f"{IMAGE} is missing: run scripts/images.sh base")
    name = f"fb{uuid.uuid4().hex[:8]}"
    backend = apps.backend_name(name)
    blue, green = Backend("v1"), Backend("v2")
    proxy = HAProxy(str(tmp_path), blue, green, backend=backend, twins=True)
    client = RuntimeClient(proxy.socket)
    for colour, version in (("blue", "v1"), ("green", "v2")):
        docker(
            "run", "-d", "--name", f"{name}-{colour}", "--label", f"onebox_version={version}",
            IMAGE, "sh", "-c", f"echo {colour} serves {version}; exec sleep 600",
        )  # fmt: skip
    state, etc = tmp_path / "state" / name, tmp_path / "etc" / name
    state.mkdir(parents=True)
    etc.mkdir(parents=True)
    (etc / "app.json").write_text(json.dumps({"kind": "web", "fallback_seconds": 300}))
    (tmp_path / "onebox.json").write_text(
        json.dumps(
            {
                "haproxy_socket": proxy.socket,
                "haproxy_state_file": proxy.state_file,
                "health_timeout": 20,
                "drain_timeout": 1,
            }
        )
    )
    history = str(state / "releases.jsonl")
    release_log.append_release(history, {"action": "deploy", "version": "v1", "colour": "blue", "time": stamp(3600)})
    Switch(client, backend, ["green", "blue_fallback"], inactive_state="drain", drain_timeout=1).run()
    wait_for(lambda: describe_servers(client, backend)["blue_fallback"]["status"] == "UP")
    app = dict(
        name=name,
        backend=backend,
        proxy=proxy,
        client=client,
        blue=blue,
        green=green,
        state=state,
        etc=etc,
        history=history,
    )
    yield app
    proxy.stop()
    blue.stop()
    green.stop()
    subprocess.run(["docker", "rm", "-f", f"{name}-blue", f"{name}-green"], capture_output=True, check=False)


def deployed(app, seconds_ago):
    release_log.append_release(
        app["history"],
        {
            "action": "deploy",
            "version": "v2",
            "colour": "green",
            "previous_colour": "blue",
            "previous_version": "v1",
            "switched_at": stamp(seconds_ago),
        },
    )


def ready(app):
    return sorted(n for n, s in describe_servers(app["client"], app["backend"]).items() if s["admin_state"] == "ready")


def answers(app, count=30):
    """The versions COUNT requests got through HAProxy (an error: its status)."""
    got = []
    for _i in range(count):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{app['proxy'].http_port}/", timeout=5) as resp:
                got.append(json.loads(resp.read())["version"])
        except urllib.error.HTTPError as exc:
            got.append(exc.code)
    return got


def test_after_onebox_rollback_the_release_rolled_back_from_never_takes_the_traffic(tmp_path, web):
    deployed(web, 5)
    rc, out, err = onebox(tmp_path, "rollback", web["name"])
    assert rc == 0, err
    assert "rolled back from v2 to v1" in out
    assert ready(web) == ["blue"]
    # The live release (v1) fails: HAProxy marks it down. Nothing may go to
    # v2, the release just rolled back from; the site answers 503.
    web["blue"].stop()
    wait_for(lambda: describe_servers(web["client"], web["backend"])["blue"]["op_state"] == "down", timeout=15)
    got = answers(web)
    assert "v2" not in got and set(got) == {503}, got
    # And onebox fallbacks, the timer's command, has nothing to take out.
    rc, out, err = onebox(tmp_path, "fallbacks", web["name"])
    assert rc == 0 and out == "", (out, err)


def test_a_backup_server_stays_while_its_time_runs_and_goes_when_it_is_up(tmp_path, web):
    deployed(web, 5)
    rc, out, err = onebox(tmp_path, "fallbacks")
    assert rc == 0 and out == "", (out, err)
    assert ready(web) == ["blue_fallback", "green"]
    rc, out, err = onebox(tmp_path, "status", web["name"])
    assert "backup server: blue_fallback" in out, out
    # While it stands behind green, a crash of green falls back to v1.
    web["green"].stop()
    wait_for(lambda: describe_servers(web["client"], web["backend"])["green"]["op_state"] == "down", timeout=15)
    assert set(answers(web, 10)) == {"v1"}
    web["green"].start()
    wait_for(lambda: describe_servers(web["client"], web["backend"])["green"]["op_state"] == "up", timeout=15)
    # The same deploy, 301 s after its switch (fallback_seconds 300): out.
    deployed(web, 301)
    rc, out, err = onebox(tmp_path, "fallbacks")
    assert rc == 0, err
    assert f"{web['name']}: blue_fallback no longer stands behind green" in out
    assert ready(web) == ["green"]
    audit = release_log.read_audit(str(web["state"] / "audit.log"))
    assert any(" fallback-off " in line and "servers=blue_fallback" in line for line in audit), audit
    # Saved for a reload: the state file has it drained.
    with open(web["proxy"].state_file) as fh:
        saved = [line.split() for line in fh if " blue_fallback " in line]
    assert saved and saved[0][6] != "0", saved  # srv_admin_state: drain, not ready
    web["proxy"].reload()
    assert ready(web) == ["green"]


def test_fallback_seconds_zero_keeps_no_backup_server(tmp_path, web):
    deployed(web, 1)
    (web["etc"] / "app.json").write_text(json.dumps({"kind": "web", "fallback_seconds": 0}))
    rc, _out, err = onebox(tmp_path, "fallbacks", web["name"])
    assert rc == 0, err
    assert ready(web) == ["green"]


def test_a_backup_server_behind_a_release_that_is_not_a_deploy_goes(tmp_path, web):
    """The newest record is a rollback to green (the release a rollback left is
    blue): blue must not stand behind it, whatever the time."""
    deployed(web, 1)
    release_log.append_release(
        web["history"], {"action": "rollback", "version": "v2", "colour": "green", "previous_colour": "blue"}
    )
    rc, _out, err = onebox(tmp_path, "fallbacks", web["name"])
    assert rc == 0, err
    assert ready(web) == ["green"]


def test_a_held_lock_leaves_the_backup_server_to_the_run_that_holds_it(tmp_path, web):
    deployed(web, 301)
    lock = web["state"] / "deploy.lock"
    from ansible_collections.onebox.platform.plugins.module_utils import deploy_lock

    holder, _w, _b = deploy_lock.acquire(str(lock), owner="ci@elsewhere", version="v3")
    try:
        rc, out, err = onebox(tmp_path, "fallbacks", web["name"])
        assert rc == 0 and out == "", (out, err)
        assert ready(web) == ["blue_fallback", "green"]
    finally:
        deploy_lock.release(str(lock), holder["token"])
    rc, out, err = onebox(tmp_path, "fallbacks", web["name"])
    assert rc == 0 and ready(web) == ["green"], (out, err)


def status(tmp_path, app):
    rc, out, err = onebox(tmp_path, "status", app["name"], "--json")
    return rc, json.loads(out), err


def test_status_exit_codes_follow_what_haproxy_serves(tmp_path, web):
    deployed(web, 5)
    rc, got, err = status(tmp_path, web)
    assert rc == 0 and got["health"] == "healthy" and got["ok"] is True, (got, err)
    (app,) = got["apps"]
    assert (app["live"], app["version"], app["backup_servers"]) == ("green", "v2", ["blue_fallback"]), app
    assert app["colours"]["green"]["haproxy"]["op_state"] == "up", app
    # The live release fails its checks: the backup server (v1) serves. Degraded.
    web["green"].stop()
    wait_for(lambda: describe_servers(web["client"], web["backend"])["green"]["op_state"] == "down", timeout=15)
    rc, got, _err = status(tmp_path, web)
    assert rc == 1 and got["health"] == "degraded", got
    assert "backup server blue_fallback takes the traffic" in got["apps"][0]["reasons"][0], got
    rc, out, _err = onebox(tmp_path, "status", web["name"])
    assert rc == 1 and "[DEGRADED: HAProxy has green down" in out, out
    # Its time is up: nothing serves. Down.
    release_log.append_release(web["history"], {"action": "deploy", "version": "v2", "colour": "green",
                                                "previous_colour": "blue", "switched_at": stamp(301)})  # fmt: skip
    assert onebox(tmp_path, "fallbacks")[0] == 0
    rc, got, _err = status(tmp_path, web)
    assert rc == 2 and got["health"] == "down", got
    assert set(answers(web, 5)) == {503}


def test_a_refusal_exits_2_with_the_reason_in_the_json(tmp_path, web):
    rc, out, err = onebox(tmp_path, "rollback", "nope", "--json")
    got = json.loads(out)
    assert rc == 2 and got["refused"] is True and got["exit_code"] == 2, got
    assert "no app 'nope' on this server" in got["error"] and "no app 'nope'" in err


def test_logs_show_the_live_colours_container(tmp_path, web):
    deployed(web, 5)
    rc, out, err = onebox(tmp_path, "logs", web["name"], "--tail", "5")
    assert rc == 0 and "green serves v2" in out and "blue" not in out, (out, err)
    rc, out, err = onebox(tmp_path, "--json", "logs", web["name"], "--colour", "blue")
    got = json.loads(out)
    assert rc == 0 and got["colour"] == "blue" and any("blue serves v1" in line for line in got["lines"]), got
    rc, out, err = onebox(tmp_path, "logs", web["name"], "-f", "--json")
    assert rc == 2 and "takes no --json" in err
