"""app_state against a real HAProxy and real Docker containers (R42)."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from conftest import run_module

IMAGE = "local/debian:bookworm"  # scripts/images.sh base


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def app():
    """Containers of a throwaway app: <app>-blue runs v1, <app>-green exists
    (created, not started) with v2."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        pytest.fail(f"{IMAGE} is missing: run scripts/images.sh base")
    name = f"appstate{uuid.uuid4().hex[:8]}"
    for colour, version, verb in (("blue", "v1", "run"), ("green", "v2", "create")):
        docker(
            verb,
            *(["-d"] if verb == "run" else []),
            "--name",
            f"{name}-{colour}",
            "--label",
            f"onebox_app={name}",
            "--label",
            f"onebox_colour={colour}",
            "--label",
            f"onebox_version={version}",
            IMAGE,
            "sleep",
            "600",
        )
    yield name
    subprocess.run(["docker", "rm", "-f", f"{name}-blue", f"{name}-green"], capture_output=True, check=False)


def state(proxy, app, check=False, **kw):
    args = dict(dict(app=app, socket=proxy.socket, backend="app"), **kw)
    return run_module("app_state", args, check=check)


def write_history(tmp_path, lines):
    path = tmp_path / "releases.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def warnings(res):
    """The module's warnings as text (ansible-core 2.19 returns each as an event)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in res.get("warnings", [])]


def test_reads_live_colour_containers_and_history(haproxy, app, tmp_path):
    history = write_history(
        tmp_path,
        [json.dumps({"action": "deploy", "version": "v1"}), "", json.dumps({"action": "deploy", "version": "v2"})],
    )
    before = (tmp_path / "releases.jsonl").read_bytes()
    for check in (False, True):
        rc, res = state(haproxy, app, check=check, history=history)
        assert rc == 0, res.get("msg", res)
        assert res["changed"] is False
        assert res["haproxy_active"] == ["blue"]
        assert (res["live_colour"], res["idle_colour"]) == ("blue", "green")
        blue, green = res["colours"]["blue"], res["colours"]["green"]
        assert blue.pop("image_id").startswith("sha256:")
        assert blue == dict(
            exists=True, running=True, version="v1", image=IMAGE, health="", container=f"{app}-blue", env_current=True
        )
        assert green["exists"] is True and green["running"] is False and green["version"] == "v2"
        assert [r["version"] for r in res["releases"]] == ["v1", "v2"]
    assert (tmp_path / "releases.jsonl").read_bytes() == before


def test_live_needs_the_container_running_not_only_haproxy(haproxy, app):
    # HAProxy still sends traffic to blue, but its container is gone.
    docker("rm", "-f", f"{app}-blue")
    rc, res = state(haproxy, app)
    assert rc == 0, res.get("msg", res)
    assert res["haproxy_active"] == ["blue"]
    assert res["live_colour"] == "" and res["idle_colour"] == "blue"
    assert res["colours"]["blue"] == dict(
        exists=False,
        running=False,
        version="",
        image="",
        image_id="",
        health="",
        container=f"{app}-blue",
        env_current=False,
    )
    assert res["releases"] == []


def test_env_current_compares_the_env_file_with_each_container(haproxy, app, tmp_path):
    # Both containers were started without APP_MODE; an env file that now
    # sets it makes them stale (a rollback to them would run old settings).
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\n\n")
    rc, res = state(haproxy, app, env_file=str(env_file))
    assert rc == 0, res.get("msg", res)
    assert res["colours"]["blue"]["env_current"] is True
    assert res["colours"]["green"]["env_current"] is True
    env_file.write_text("APP_MODE=fast\n")
    rc, res = state(haproxy, app, env_file=str(env_file))
    assert rc == 0, res.get("msg", res)
    assert res["colours"]["blue"]["env_current"] is False
    assert res["colours"]["green"]["env_current"] is False


def test_no_containers_at_all_is_a_first_deploy(haproxy):
    rc, res = state(haproxy, f"never{uuid.uuid4().hex[:8]}", history="/nonexistent/releases.jsonl")
    assert rc == 0, res.get("msg", res)
    assert res["live_colour"] == "" and res["idle_colour"] == "blue"
    assert not res["colours"]["blue"]["exists"] and not res["colours"]["green"]["exists"]
    assert res["releases"] == []


def test_a_damaged_history_line_fails_naming_it(haproxy, app, tmp_path):
    history = write_history(tmp_path, [json.dumps({"version": "v1"}), '{"version": "v2"'])
    rc, res = state(haproxy, app, history=history)
    assert rc != 0 and res["failed"]
    assert "line 2 is not JSON" in res["msg"] and "nothing was changed" in res["msg"]


def test_a_torn_last_line_is_a_warning_not_a_failure(haproxy, app, tmp_path):
    history = tmp_path / "releases.jsonl"
    history.write_text(json.dumps({"action": "deploy", "version": "v1"}) + '\n{"action": "deploy", "ver')
    before = history.read_bytes()
    rc, res = state(haproxy, app, history=str(history), action="deploy", version="v3")
    assert rc == 0, res.get("msg", res)
    assert [r["version"] for r in res["releases"]] == ["v1"]
    assert res["release"]["version"] == "v3"
    (warning,) = warnings(res)
    assert "ends with a torn line" in warning and '\'{"action": "deploy", "ver\'' in warning
    assert history.read_bytes() == before


def test_an_unknown_backend_fails_clearly(haproxy, app):
    rc, res = state(haproxy, app, backend="nope")
    assert rc != 0 and res["failed"]
    assert "Cannot read backend nope" in res["msg"] and "no backend 'nope'" in res["msg"]


def test_an_unreachable_socket_fails_clearly(app, tmp_path):
    rc, res = run_module("app_state", dict(app=app, socket=str(tmp_path / "missing.sock")))
    assert rc != 0 and res["failed"]
    assert "Cannot read backend app_" + app in res["msg"]


def test_colours_must_differ(haproxy, app):
    rc, res = state(haproxy, app, colours=["blue", "blue"])
    assert rc != 0 and "two or more different names" in res["msg"]
