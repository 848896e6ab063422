"""deploy_lock: atomic, says who holds it, breaks stale locks only when told."""

from __future__ import annotations

import json
import os
import threading

from conftest import run_module


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
