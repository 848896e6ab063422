"""deploy_lock: atomic, says who holds it, breaks stale locks only when told,
never waits for a dead run, records every break, never frees another run's lock."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading

from conftest import COLLECTIONS, run_module, wait_for

ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_RESULT_FORMAT="json")


def lock(path, **kw):
    return run_module("deploy_lock", dict(path=str(path), **kw))


def test_take_and_release(tmp_path):
    path = tmp_path / "deploy.lock"
    rc, res = lock(path, owner="alice", version="v2", reason="CI run 7")
    assert rc == 0 and res["changed"]
    holder = json.loads((path / "holder.json").read_text())
    assert holder["owner"] == "alice" and holder["version"] == "v2" and holder["token"] == res["holder"]["token"]
    rc, res2 = lock(path, state="absent", token=res["holder"]["token"])
    assert rc == 0 and res2["changed"] and not path.exists()
    rc, res3 = lock(path, state="absent")
    assert rc == 0 and res3["changed"] is False


def test_second_taker_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / "deploy.lock"
    assert lock(path, owner="alice", version="v2", reason="hotfix")[0] == 0
    rc, res = lock(path, owner="bob", wait=1)
    assert rc == 1
    assert "held by alice" in res["msg"] and "deploying v2" in res["msg"] and "(hotfix)" in res["msg"]
    assert "waited 1 s" in res["msg"]
    # The refused run learns who holds it, never the holder's token.
    assert res["holder"]["owner"] == "alice" and "token" not in res["holder"]


def test_waits_for_release(tmp_path):
    path = tmp_path / "deploy.lock"
    assert lock(path, owner="alice")[0] == 0
    threading.Timer(1.0, lambda: lock(path, state="absent")).start()
    rc, res = lock(path, owner="bob", wait=20)
    assert rc == 0, res.get("msg")
    assert res["holder"]["owner"] == "bob" and res["waited"] >= 0.5


def test_stale_lock_is_broken_only_when_asked(tmp_path):
    path = tmp_path / "deploy.lock"
    os.mkdir(path)
    (path / "holder.json").write_text(json.dumps({"owner": "dead-ci", "since": "2020-01-01T00:00:00+00:00"}))
    rc, res = lock(path, owner="bob")
    assert rc == 1 and "looks stale" in res["msg"] and "deploy_break_lock=true" in res["msg"]
    rc, res = lock(path, owner="bob", break_stale=True, stale_after=60)
    assert rc == 0, res.get("msg")
    assert res["broke_stale"]["owner"] == "dead-ci"


def test_release_with_a_foreign_token_is_refused(tmp_path):
    path = tmp_path / "deploy.lock"
    lock(path, owner="alice")
    rc, res = lock(path, state="absent", token="not-mine")
    assert rc == 1 and "not by this run" in res["msg"] and path.exists()


def test_release_with_a_token_leaves_a_lock_without_one(tmp_path):
    """A lock whose holder.json records no token (or cannot be read) is not
    this run's to free."""
    path = tmp_path / "deploy.lock"
    os.mkdir(path)
    (path / "holder.json").write_text(json.dumps({"owner": "old-ci", "since": "2026-01-01T00:00:00+00:00"}))
    rc, res = lock(path, state="absent", token="mine")
    assert rc == 1 and "records no token" in res["msg"] and "left alone" in res["msg"], res
    assert json.loads((path / "holder.json").read_text())["owner"] == "old-ci"
    (path / "holder.json").write_text("{torn")
    rc, res = lock(path, state="absent", token="mine")
    assert rc == 1 and "cannot be read" in res["msg"] and (path / "holder.json").read_text() == "{torn"


def test_release_of_a_lock_broken_meanwhile_warns(tmp_path):
    path = tmp_path / "deploy.lock"
    rc, res = lock(path, owner="alice")
    os.unlink(path / "holder.json")
    os.rmdir(path)
    rc, res = lock(path, state="absent", token=res["holder"]["token"])
    assert rc == 0 and not res["changed"] and "no longer there" in json.dumps(res.get("warnings"))


def test_a_break_is_recorded_in_the_audit_log(tmp_path):
    path, audit = tmp_path / "deploy.lock", tmp_path / "audit.log"
    os.mkdir(path)
    (path / "holder.json").write_text(json.dumps({"owner": "dead-ci", "since": "2020-01-01T00:00:00+00:00"}))
    rc, res = lock(path, owner="bob", break_stale=True, stale_after=60, audit_log=str(audit))
    assert rc == 0, res.get("msg")
    (line,) = audit.read_text().splitlines()
    assert " lock-broken " in line and f"lock={path}" in line and "holder=dead-ci since 2020-01-01" in line
    assert "why=older than stale_after" in line and line.endswith("by=bob")


def test_only_one_of_many_concurrent_takers_wins(tmp_path):
    path = tmp_path / "deploy.lock"
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(lock(path, owner=f"r{i}")[0])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 1, 1, 1, 1]


def test_check_mode_changes_nothing(tmp_path):
    path = tmp_path / "deploy.lock"
    rc, res = run_module("deploy_lock", dict(path=str(path), owner="x"), check=True)
    assert rc == 0 and res["changed"] and not path.exists()


# --- the controller side (action plugin): is the holder's run alive? ---------------


def ansible_lock(path, **kw):
    """Run the module as a playbook task does: through its action plugin."""
    args = " ".join(f"{k}={v}" for k, v in dict(path=str(path), **kw).items())
    proc = subprocess.run(
        ["ansible", "localhost", "-c", "local", "-m", "onebox.platform.deploy_lock", "-a", args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=ENV,
    )
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def running(*args):
    """A process that runs (sleeps) with ARGS on its command line, once it has exec'd."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sleeping", *args])

    def execd():
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            return b"sleeping" in fh.read()

    wait_for(execd)
    return proc


def held_by(path, pid, controller=None, **extra):
    os.mkdir(path)
    (path / "holder.json").write_text(
        json.dumps(
            {
                "owner": "carol",
                "version": "v7",
                "since": "2026-11-24T10:00:00+00:00",
                "controller": controller or socket.gethostname(),
                "pid": pid,
                "id": "abc123",
                "token": "secret-token",
                **extra,
            }
        )
    )


def ended_pid():
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(ended.stdout)


def result_of(out):
    """The task's result from the ad-hoc command's output ("HOST | FAILED! => {...}"),
    the first JSON document after the marker: warnings that Python libraries
    print on the controller (cryptography's about DSA, say) may follow it."""
    result, _end = json.JSONDecoder().raw_decode(re.split(r"\| [A-Z!]+ => ", out)[-1])
    return result


def test_taking_the_lock_records_the_controller_and_its_process(tmp_path):
    path = tmp_path / "deploy.lock"
    rc, out = ansible_lock(path, owner="dave")
    assert rc == 0, out
    holder = json.loads((path / "holder.json").read_text())
    assert holder["controller"] == socket.gethostname() and holder["pid"] > 1 and holder["id"]


def test_a_live_holder_is_never_broken(tmp_path):
    path, audit = tmp_path / "deploy.lock", tmp_path / "audit.log"
    # A process that looks like a running ansible-playbook.
    alive = running("ansible-playbook")
    try:
        held_by(path, alive.pid)
        rc, out = ansible_lock(path, owner="erin", break_stale="true", audit_log=audit)
        assert rc != 0
        assert "held by carol" in out and "still going" in out and "NOT broken" in out, out
        assert json.loads((path / "holder.json").read_text())["id"] == "abc123"
        assert not audit.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_live_holder_with_its_start_recorded_is_waited_for_not_broken(tmp_path):
    from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import process_start

    path = tmp_path / "deploy.lock"
    # Its command line names no ansible: the recorded start is what says it is the run.
    alive = running()
    try:
        held_by(path, alive.pid, pid_start=process_start(alive.pid))
        rc, out = ansible_lock(path, owner="erin", wait=1, break_stale="true")
        assert rc != 0 and "still going" in out and "NOT broken" in out, out
        assert result_of(out)["waited"] >= 1 and result_of(out)["holder_run"] == "alive"
        # The error line says it too (not the module's first guess, "looks stale").
        assert "looks stale" not in out and "waiting up to 1 s for deploy lock" in out, out
        assert json.loads((path / "holder.json").read_text())["id"] == "abc123"
    finally:
        alive.kill()
        alive.wait()


def test_a_gone_holder_is_named_and_broken_only_when_asked(tmp_path):
    path, audit = tmp_path / "deploy.lock", tmp_path / "audit.log"
    held_by(path, ended_pid())
    rc, out = ansible_lock(path, owner="erin")
    assert rc != 0 and "has ended" in out and "deploy_break_lock=true" in out, out
    assert path.exists()
    rc, out = ansible_lock(path, owner="erin", break_stale="true", audit_log=audit)
    assert rc == 0, out
    assert "broke a stale deploy lock held by carol" in out
    assert "secret-token" not in out, "the broken holder's token was shown"
    assert json.loads((path / "holder.json").read_text())["owner"] == "erin"
    (line,) = audit.read_text().splitlines()
    assert " lock-broken " in line and "holder=carol since 2026-11-24T10:00:00+00:00 deploying v7" in line
    assert "id=abc123" in line and "why=its run has ended" in line and line.endswith("by=erin")
    assert "secret-token" not in line


def test_a_gone_holder_fails_a_long_wait_at_once(tmp_path):
    """The review's case: a lock left by a killed run, and a reload that
    waits up to 600 s. It does not wait: it fails with deploy.yml's message."""
    path = tmp_path / "deploy.lock"
    held_by(path, ended_pid())
    rc, out = ansible_lock(path, owner="erin", wait=600)
    assert rc != 0 and "has ended" in out and "deploy_break_lock=true" in out, out
    res = result_of(out)
    # No wait: only the time to read the lock and check its run (under load, milliseconds).
    assert res["waited"] < 1 and res["holder_run"] == "gone" and re.search(r"waited 0(\.\d)? s", res["msg"])
    assert json.loads((path / "holder.json").read_text())["id"] == "abc123"


def test_a_pid_given_to_another_process_is_not_the_run(tmp_path):
    alive = running("ansible-playbook")
    try:
        path = tmp_path / "deploy.lock"
        # The run recorded another start for that PID: it ended, and the PID went to this process.
        held_by(path, alive.pid, pid_start="0d1f0d1f-0000-4000-8000-000000000000:12345")
        rc, out = ansible_lock(path, owner="erin", wait=600)
        assert rc != 0 and "has ended" in out and result_of(out)["waited"] == 0, out
    finally:
        alive.kill()
        alive.wait()


def test_the_reload_fails_at_once_on_a_gone_holder(tmp_path, haproxy):
    """roles/haproxy/tasks/reload.yml (site.yml's reload) on a lock left by a
    killed deploy: fails at once with the deploy's message and the reload
    stays due; the lock is not broken unasked."""
    state = tmp_path / "onebox" / "shop"
    state.mkdir(parents=True)
    held_by(state / "deploy.lock", ended_pid())
    marker = tmp_path / "reload-due"
    app = {
        "name": "shop",
        "derived": {"lock": str(state / "deploy.lock"), "audit_log": str(state / "audit.log"), "backend": "app"},
    }
    play = tmp_path / "reload.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Reload as site.yml does",
                            "ansible.builtin.include_role": {"name": "onebox.platform.haproxy", "tasks_from": "reload"},
                        }
                    ],
                }
            ]
        )
    )
    extra = dict(
        haproxy_web_apps=[app],
        haproxy_socket=haproxy.socket,
        haproxy_state_file=haproxy.state_file,
        haproxy_reload_lock_wait=600,
        haproxy_reload_marker=str(marker),
    )
    proc = subprocess.run(
        ["ansible-playbook", str(play), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=ENV,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "held by carol" in out and "has ended" in out, out
    assert "deploy_break_lock=true" in out and "waited 0 s" in out, out
    assert '"waited": 0.0' in out and '"holder_run": "gone"' in out, out
    assert "Reload HAProxy" not in out.split("Wait for deploys in progress", 1)[1].split("Let deploys go on")[0]
    assert json.loads((state / "deploy.lock" / "holder.json").read_text())["id"] == "abc123"
    assert marker.exists(), "a reload that did not happen is not remembered as due"
    assert not (state / "audit.log").exists()


def test_a_holder_on_another_machine_is_said_to_be_unverifiable(tmp_path):
    path = tmp_path / "deploy.lock"
    held_by(path, 4242, controller="ci-runner-7")
    rc, out = ansible_lock(path, owner="erin")
    assert rc != 0 and "ci-runner-7, another machine" in out and "cannot be checked" in out, out
    rc, out = ansible_lock(path, owner="erin", break_stale="true")
    assert rc == 0 and "could not be checked" in out, out
