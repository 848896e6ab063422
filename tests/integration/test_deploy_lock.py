"""deploy_lock: atomic, says who holds it, breaks stale locks only when told."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

from conftest import COLLECTIONS, run_module


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
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1"),
    )
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def held_by(path, pid, controller=None):
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
            }
        )
    )


def test_taking_the_lock_records_the_controller_and_its_process(tmp_path):
    path = tmp_path / "deploy.lock"
    rc, out = ansible_lock(path, owner="dave")
    assert rc == 0, out
    holder = json.loads((path / "holder.json").read_text())
    assert holder["controller"] == socket.gethostname() and holder["pid"] > 1 and holder["id"]


def test_a_live_holder_is_never_broken(tmp_path):
    path = tmp_path / "deploy.lock"
    # A process that looks like a running ansible-playbook.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ansible-playbook"])
    try:
        held_by(path, alive.pid)
        rc, out = ansible_lock(path, owner="erin", break_stale="true")
        assert rc != 0
        assert "held by carol" in out and "still going" in out and "NOT broken" in out, out
        assert json.loads((path / "holder.json").read_text())["id"] == "abc123"
    finally:
        alive.kill()
        alive.wait()


def test_a_gone_holder_is_named_and_broken_only_when_asked(tmp_path):
    path = tmp_path / "deploy.lock"
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    held_by(path, int(ended.stdout))
    rc, out = ansible_lock(path, owner="erin")
    assert rc != 0 and "has ended" in out and "deploy_break_lock=true" in out, out
    assert path.exists()
    rc, out = ansible_lock(path, owner="erin", break_stale="true")
    assert rc == 0, out
    assert "broke a stale deploy lock held by carol" in out
    assert "secret-token" not in out, "the broken holder's token was shown"
    assert json.loads((path / "holder.json").read_text())["owner"] == "erin"


def test_a_holder_on_another_machine_is_said_to_be_unverifiable(tmp_path):
    path = tmp_path / "deploy.lock"
    held_by(path, 4242, controller="ci-runner-7")
    rc, out = ansible_lock(path, owner="erin")
    assert rc != 0 and "ci-runner-7, another machine" in out and "cannot be checked" in out, out
    rc, out = ansible_lock(path, owner="erin", break_stale="true")
    assert rc == 0 and "could not be checked" in out, out
