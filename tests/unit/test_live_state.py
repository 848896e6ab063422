"""module_utils/live_state: live, current and idle colour, decided once for
the app_state module and the onebox program."""

from __future__ import annotations

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import live_state
from ansible_collections.onebox.platform.plugins.module_utils.live_state import (
    colour_info,
    env_file_lines,
    metrics,
    resolve,
)

ORDER = ["blue", "green"]


def running(version):
    return colour_info(
        "x", {"State": {"Running": True}, "Config": {"Labels": {"onebox_version": version}, "Image": "i"}}
    )


def test_the_live_colour_is_active_and_running():
    colours = {"blue": running("v1"), "green": running("v2")}
    state = resolve(ORDER, ["green"], colours, lambda: "blue")
    assert state == dict(live="green", maintenance="", current="green", idle="blue", current_version="v2")


def test_an_active_colour_whose_container_is_gone_is_not_live():
    colours = {"blue": running("v1"), "green": colour_info("app-green", None)}
    state = resolve(ORDER, ["green"], colours, lambda: "")
    assert state["live"] == "" and state["current"] == "" and state["idle"] == "blue"


def test_in_maintenance_the_file_names_the_current_colour():
    read = []
    colours = {"blue": running("v1"), "green": running("v2")}
    state = resolve(ORDER, [], colours, lambda: read.append(1) or "blue")
    assert state == dict(live="", maintenance="blue", current="blue", idle="green", current_version="v1")
    assert read == [1]
    # With a live colour the file is not read at all.
    resolve(ORDER, ["green"], colours, lambda: read.append(2) or "blue")
    assert read == [1]


def test_a_colour_started_with_an_older_env_file_is_not_current():
    text = "# written by site.yml\n\nDATABASE_URL=postgres://shop:new@postgres:5432/shop\nRAILS_ENV=production\n"
    env = env_file_lines(text)
    assert env == ["DATABASE_URL=postgres://shop:new@postgres:5432/shop", "RAILS_ENV=production"]

    def started_with(*lines):
        return colour_info("x", {"State": {"Running": True}, "Config": {"Env": ["PATH=/usr/bin", *lines]}}, env)

    assert started_with(*env)["env_current"] is True
    # Moved over from the superuser's URL: the old release is no switch back.
    old = started_with("DATABASE_URL=postgres://postgres:old@postgres:5432/shop", "RAILS_ENV=production")
    assert old["env_current"] is False
    # Without the env file nothing is known against it; no container is never current.
    assert running("v1")["env_current"] is True
    assert colour_info("x", None, env)["env_current"] is False


def test_metrics_say_an_app_is_up_while_a_container_runs_healthy():
    def c(running, health=""):
        return {"running": running, "health": health}

    text = metrics(
        [
            ("shop", "web", {"blue": c(True, "healthy"), "green": c(False)}),
            ("mailer", "worker", {"blue": c(False), "green": c(True, "unhealthy")}),
            ("jobs", "worker", {"blue": c(True), "green": c(False)}),
        ]
    )
    assert 'onebox_app_up{app="shop",kind="web"} 1\n' in text
    assert 'onebox_app_up{app="mailer",kind="worker"} 0\n' in text
    assert 'onebox_app_up{app="jobs",kind="worker"} 1\n' in text
    assert text.startswith("# HELP onebox_app_up")


def _state(live="green", maintenance="", health=""):
    colours = {c: {"running": c == live, "health": health if c == live else ""} for c in ("blue", "green")}
    return {"live": live, "maintenance": maintenance, "colours": colours}


UP = {"admin_state": "ready", "op_state": "up"}
DOWN = {"admin_state": "ready", "op_state": "down"}
OUT = {"admin_state": "drain", "op_state": "up"}


@pytest.mark.parametrize(
    "kind, state, servers, expected, reason",
    [
        ("web", _state(), {"green": UP, "blue": OUT, "blue_fallback": UP}, "healthy", None),
        ("web", _state(health="unhealthy"), {"green": UP}, "degraded", "unhealthy"),
        ("web", _state(), {"green": DOWN, "blue_fallback": UP}, "degraded", "backup server blue_fallback"),
        ("web", _state(), {"green": DOWN, "blue_fallback": dict(OUT, admin_state="drain")}, "down", "no backup server"),
        ("web", _state(), {"green": DOWN, "blue_fallback": DOWN}, "down", "no backup server"),
        ("web", _state(live="", maintenance="green"), {}, "degraded", "maintenance page"),
        ("web", _state(live=""), {}, "down", "no colour is live"),
        ("worker", _state(), {}, "healthy", None),
        ("worker", _state(health="unhealthy"), {}, "degraded", "unhealthy"),
        # A worker has no maintenance page: no running container is down.
        ("worker", _state(live="", maintenance="green"), {}, "down", "no colour is live"),
    ],
)
def test_health(kind, state, servers, expected, reason):
    got, why = live_state.health(kind, state, servers)
    assert got == expected
    assert (reason is None and why == []) or any(reason in w for w in why), why
