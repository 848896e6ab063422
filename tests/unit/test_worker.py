"""module_utils/worker: the order of a worker's replacement, against a fake
Docker that keeps the containers' states and a log of the calls."""

from __future__ import annotations

import json

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import worker


class FakeDocker:
    """Containers with a state; `start` makes one 'starting', and it turns
    healthy (or unhealthy) after HEALTHY_AFTER inspections."""

    def __init__(self, running=(), stopped=(), healthy_after=2, never_healthy=(), kill_on_stop=()):
        self.state = {n: "running" for n in running} | {n: "exited" for n in stopped}
        self.checks = {}
        self.healthy_after = healthy_after
        self.never_healthy = set(never_healthy)
        self.kill_on_stop = set(kill_on_stop)
        self.calls = []
        self.exit_codes = {}

    def __call__(self, args):
        self.calls.append(" ".join(args))
        verb, name = args[0], args[-1]
        if verb == "container":
            if name not in self.state:
                return 1, "", f"Error: No such container: {name}"
            st = self.state[name]
            running = st != "exited"
            health = None
            if running:
                self.checks[name] = self.checks.get(name, 0) + 1
                if self.checks[name] >= self.healthy_after:
                    health = "unhealthy" if name in self.never_healthy else "healthy"
                else:
                    health = "starting"
            obj = {
                "State": {"Running": running, "ExitCode": self.exit_codes.get(name, 0), "Health": {"Status": health}},
                "RestartCount": 0,
            }
            return 0, json.dumps([obj]), ""
        if verb == "start":
            self.state[name] = "running"
            self.checks[name] = 0
            return 0, name, ""
        if verb == "stop":
            self.state[name] = "exited"
            self.exit_codes[name] = 137 if name in self.kill_on_stop else 0
            return 0, name, ""
        if verb == "logs":
            return 0, "job 1 start\n", ""
        raise AssertionError(args)


def run(fake, new, old, order, **kw):
    return worker.release(fake, new, old, order, 10, 5, settle=0, sleep=lambda s: None, **kw)


def order_of(fake):
    return [c for c in fake.calls if c.split()[0] in ("start", "stop")]


def test_start_first_starts_the_new_one_healthy_before_the_old_one_stops():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"])
    out = run(fake, "jobs-green", "jobs-blue", "start-first")
    assert order_of(fake) == ["start jobs-green", "stop -t 10 jobs-blue"]
    # The old one was stopped only after the new one was seen healthy.
    first_stop = fake.calls.index("stop -t 10 jobs-blue")
    assert fake.calls[first_stop - 1] == "container inspect jobs-green"
    assert out["old_stop"] == {"stop_ms": out["old_stop"]["stop_ms"], "exit_code": 0, "killed": False}
    assert fake.state == {"jobs-blue": "exited", "jobs-green": "running"}


def test_stop_first_stops_the_old_one_before_the_new_one_starts():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"])
    run(fake, "jobs-green", "jobs-blue", "stop-first")
    assert order_of(fake) == ["stop -t 10 jobs-blue", "start jobs-green"]


def test_a_job_that_outlives_the_stop_timeout_is_reported_killed():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"], kill_on_stop=["jobs-blue"])
    out = run(fake, "jobs-green", "jobs-blue", "start-first")
    assert out["old_stop"]["killed"] is True and out["old_stop"]["exit_code"] == 137


def test_start_first_never_healthy_leaves_the_old_one_running():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"], never_healthy=["jobs-green"])
    with pytest.raises(worker.WorkerError, match="jobs-blue keeps running"):
        run(fake, "jobs-green", "jobs-blue", "start-first")
    assert fake.state == {"jobs-blue": "running", "jobs-green": "exited"}
    assert "stop -t 10 jobs-blue" not in fake.calls


def test_stop_first_never_healthy_starts_the_old_one_again():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"], never_healthy=["jobs-green"])
    with pytest.raises(worker.WorkerError, match="jobs-blue started again"):
        run(fake, "jobs-green", "jobs-blue", "stop-first")
    assert fake.state == {"jobs-blue": "running", "jobs-green": "exited"}


def test_a_first_deploy_only_starts():
    fake = FakeDocker(stopped=["jobs-blue"])
    out = run(fake, "jobs-blue", "", "stop-first")
    assert order_of(fake) == ["start jobs-blue"] and out["old"] == ""


def test_timeout_names_the_container_and_its_last_lines():
    fake = FakeDocker(running=["jobs-blue"], stopped=["jobs-green"], healthy_after=10**6)
    ticks = iter(range(0, 1000))
    with pytest.raises(worker.WorkerError, match=r"jobs-green was not healthy after 5s .*job 1 start"):
        worker.release(
            fake,
            "jobs-green",
            "jobs-blue",
            "start-first",
            10,
            5,
            settle=0,
            clock=lambda: next(ticks),
            sleep=lambda s: None,
        )


def test_unknown_order_is_refused():
    with pytest.raises(worker.WorkerError, match="unknown; use start-first or stop-first"):
        run(FakeDocker(), "a", "b", "sometimes")
