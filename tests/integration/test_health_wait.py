"""health_wait against real HTTP servers and real Docker containers (R12, R42)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from conftest import Backend, free_port, run_module


@pytest.fixture
def app():
    backend = Backend("v2")
    yield backend
    backend.stop()


def url(backend, path="/health"):
    return f"http://127.0.0.1:{backend.port}{path}"


def test_waits_for_the_deployed_version(app):
    rc, res = run_module(
        "health_wait", dict(url=url(app), json_path="version", json_value="v2", successes=3, interval=0.05)
    )
    assert rc == 0, res.get("msg")
    assert res["changed"] is False
    assert res["attempts"] == 3
    assert res["last"][url(app)]["status"] == 200


def test_wrong_version_times_out_with_what_it_saw(app):
    t0 = time.monotonic()
    rc, res = run_module(
        "health_wait", dict(url=url(app), json_path="version", json_value="v3", interval=0.1, deadline=1)
    )
    assert rc == 1
    assert "not healthy within 1 s" in res["msg"]
    assert "version is 'v2', expected 'v3'" in res["msg"]
    assert '"version": "v2"' in res["msg"]  # body excerpt
    assert res["attempts"] >= 3
    assert time.monotonic() - t0 < 15


def test_wrong_status(app):
    app.health_status = 503
    rc, res = run_module("health_wait", dict(url=url(app), interval=0.1, deadline=0.5))
    assert rc == 1
    assert "HTTP 503, expected 200" in res["msg"]


def test_status_range_and_body_regex(app):
    app.health_status = 204
    rc, res = run_module(
        "health_wait", dict(url=url(app, "/"), status_codes=["200-299"], body_regex=r'"version":\s*"v2"')
    )
    assert rc == 0, res.get("msg")
    rc, res = run_module("health_wait", dict(url=url(app, "/"), body_regex="nope", interval=0.1, deadline=0.3))
    assert rc == 1 and "body does not match /nope/" in res["msg"]


def test_refused_endpoint():
    port = free_port()
    rc, res = run_module("health_wait", dict(url=f"http://127.0.0.1:{port}/health", interval=0.1, deadline=0.5))
    assert rc == 1
    assert "Connection refused" in res["msg"]


def test_request_timeout_is_applied(app):
    t0 = time.monotonic()
    rc, res = run_module("health_wait", dict(url=url(app, "/slow?s=3"), timeout=0.3, interval=0.1, deadline=1))
    assert rc == 1
    assert "timed out after 0.3 s" in res["msg"]
    assert time.monotonic() - t0 < 10


def test_host_header_for_apps_that_validate_it(app):
    app.required_host = "shop.example.com"
    rc, res = run_module("health_wait", dict(url=url(app), interval=0.1, deadline=0.5))
    assert rc == 1 and "HTTP 400" in res["msg"]
    rc, res = run_module("health_wait", dict(url=url(app), host_header="shop.example.com"))
    assert rc == 0, res.get("msg")


def test_every_url_must_pass(app):
    other = Backend("v1")
    try:
        rc, res = run_module(
            "health_wait",
            dict(url=[url(app), url(other)], json_path="version", json_value="v2", interval=0.1, deadline=0.5),
        )
        assert rc == 1
        assert url(other) in res["msg"] and url(app) not in res["msg"].split("not healthy")[1].split(". ", 1)[1]
    finally:
        other.stop()


def test_max_failures_stops_a_verification_window_at_the_first_error(app):
    import threading

    threading.Timer(0.6, lambda: setattr(app, "health_status", 500)).start()
    t0 = time.monotonic()
    rc, res = run_module("health_wait", dict(url=url(app), successes=1000, interval=0.1, max_failures=1, deadline=60))
    assert rc == 1
    assert "1 bad answer(s)" in res["msg"] and "HTTP 500" in res["msg"]
    assert res["attempts"] >= 3
    assert time.monotonic() - t0 < 30  # not the 60 s deadline


def test_recovers_when_the_app_comes_up_late(app):
    app.health_status = 503
    import threading

    threading.Timer(0.5, lambda: setattr(app, "health_status", 200)).start()
    rc, res = run_module("health_wait", dict(url=url(app), successes=2, interval=0.1, deadline=10))
    assert rc == 0, res.get("msg")
    assert res["attempts"] > 2


@pytest.mark.parametrize(
    "args,message",
    [
        (dict(url=["ftp://x/"]), "must start with http:// or https://"),
        (dict(url=["http://127.0.0.1:1/"], status_codes=["2xx"]), "neither NNN nor NNN-NNN"),
        (dict(url=["http://127.0.0.1:1/"], body_regex="("), "not a valid regular expression"),
        (dict(url=["http://127.0.0.1:1/"], successes=0), "successes must be at least 1"),
        (dict(url=["http://127.0.0.1:1/"], deadline=0), "deadline must be positive"),
        (dict(), "one of the following is required: url, container"),
        (dict(url=["http://127.0.0.1:1/"], json_value="v1"), "json_value"),
    ],
)
def test_bad_input(args, message):
    rc, res = run_module("health_wait", args)
    assert rc == 1
    assert message in res["msg"]


# --- Docker HEALTHCHECK ---------------------------------------------------


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def container_name():
    name = f"onebox-test-{uuid.uuid4().hex[:8]}"
    yield name
    docker("rm", "-f", name)


BASE = "local/debian:bookworm"


def test_container_becomes_healthy(container_name):
    r = docker(
        "run",
        "-d",
        "--name",
        container_name,
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "1s",
        BASE,
        "sh",
        "-c",
        "sleep 1; touch /tmp/ready; sleep 60",
    )
    assert r.returncode == 0, r.stderr
    rc, res = run_module("health_wait", dict(container=container_name, interval=0.5, deadline=30))
    assert rc == 0, res.get("msg")
    assert res["status"] == "healthy"


def test_unhealthy_container_fails_with_its_check_output(container_name):
    r = docker(
        "run",
        "-d",
        "--name",
        container_name,
        "--health-cmd",
        "echo database unreachable; exit 1",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        BASE,
        "sleep",
        "60",
    )
    assert r.returncode == 0, r.stderr
    rc, res = run_module("health_wait", dict(container=container_name, interval=0.5, deadline=4))
    assert rc == 1
    assert "not healthy within 4 s" in res["msg"]
    assert "database unreachable" in res["msg"]


def test_exited_container_fails_at_once_with_logs(container_name):
    r = docker(
        "run",
        "-d",
        "--name",
        container_name,
        "--health-cmd",
        "true",
        BASE,
        "sh",
        "-c",
        "echo missing DATABASE_URL >&2; exit 3",
    )
    assert r.returncode == 0, r.stderr
    time.sleep(1)
    t0 = time.monotonic()
    rc, res = run_module("health_wait", dict(container=container_name, deadline=60))
    assert rc == 1
    assert time.monotonic() - t0 < 20  # not the 60 s deadline
    assert "exit code 3" in res["msg"] and "missing DATABASE_URL" in res["msg"]


def test_crash_looping_container_fails_at_once(container_name):
    r = docker(
        "run",
        "-d",
        "--name",
        container_name,
        "--restart",
        "always",
        "--health-cmd",
        "true",
        BASE,
        "sh",
        "-c",
        "echo cannot open data directory >&2; exit 1",
    )
    assert r.returncode == 0, r.stderr
    time.sleep(2)
    t0 = time.monotonic()
    rc, res = run_module("health_wait", dict(container=container_name, deadline=60))
    assert rc == 1
    assert time.monotonic() - t0 < 20
    assert "exit code 1" in res["msg"] and "cannot open data directory" in res["msg"]


def test_container_without_healthcheck(container_name):
    r = docker("run", "-d", "--name", container_name, BASE, "sleep", "60")
    assert r.returncode == 0, r.stderr
    rc, res = run_module("health_wait", dict(container=container_name, deadline=60))
    assert rc == 1 and "has no HEALTHCHECK" in res["msg"]


def test_unknown_container():
    rc, res = run_module("health_wait", dict(container="onebox-no-such-container"))
    assert rc == 1 and "no container 'onebox-no-such-container'" in res["msg"]
