"""module_utils/deploy_lock: whether a holder's run still goes, taking a lock
held by a dead run, and releases and breaks that never remove a lock another
run took meanwhile. Real processes and a real file system; no waiting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import deploy_lock as dl
from conftest import wait_for

HERE = socket.gethostname()


def started(proc, word):
    """PROC once it runs its own program (until exec, its command line is its parent's)."""

    def cmdline():
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            return word.encode() in fh.read()

    wait_for(cmdline)
    return proc


def never_sleep(_seconds):
    raise AssertionError("it waited for a lock whose holder's run is gone")


@pytest.fixture
def alive():
    """A running process that is not an ansible run (its command line names neither)."""
    proc = started(subprocess.Popen(["sleep", "60"]), "sleep")
    yield proc
    proc.kill()
    proc.wait()


def ended_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def hold(path, **holder):
    os.mkdir(path)
    (path / dl.INFO).write_text(json.dumps(dict({"owner": "carol", "since": "2026-11-24T10:00:00+00:00"}, **holder)))


def test_process_start_names_one_process(alive):
    mine = dl.process_start(os.getpid())
    boot, _sep, tick = mine.partition(":")
    assert len(boot) == 36 and tick.isdigit()
    assert dl.process_start(os.getpid()) == mine
    assert dl.process_start(alive.pid) not in ("", mine)
    assert dl.process_start(ended_pid()) == ""


def test_liveness_by_recorded_process_start(alive):
    start = dl.process_start(alive.pid)
    assert dl.liveness({"controller": HERE, "pid": alive.pid, "pid_start": start}) == "alive"
    # The same PID with another start: the PID was given to another process since.
    reused = {"controller": HERE, "pid": alive.pid, "pid_start": start + "0"}
    assert dl.liveness(reused) == "gone"
    assert dl.liveness({"controller": HERE, "pid": ended_pid(), "pid_start": start}) == "gone"
    # Started on another machine, or recording no process: cannot be told from here.
    assert dl.liveness({"controller": "ci-runner-7", "pid": alive.pid, "pid_start": start}) == "unknown"
    assert dl.liveness({"controller": HERE}) == "unknown"
    assert dl.liveness({"owner": "unknown", "unreadable": True}) == "unknown"


def test_liveness_of_an_old_holder_goes_by_the_command_line(alive):
    # No pid_start (written before it was recorded): only an ansible or onebox process counts.
    assert dl.liveness({"controller": HERE, "pid": alive.pid}) == "gone"
    onebox = started(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "onebox"]), "onebox")
    try:
        assert dl.liveness({"controller": HERE, "pid": onebox.pid}) == "alive"
    finally:
        onebox.kill()
        onebox.wait()


def test_combine_never_calls_a_run_anyone_sees_alive_gone():
    assert dl.combine("gone", "alive") == "alive"
    assert dl.combine("unknown", "gone") == "gone"
    assert dl.combine("unknown", "unknown") == "unknown"


def test_a_gone_holder_fails_a_long_wait_at_once(tmp_path):
    path = tmp_path / "deploy.lock"
    hold(path, controller=HERE, pid=ended_pid(), pid_start="x:1", id="abc123", token="t")
    with pytest.raises(dl.LockError) as caught:
        dl.acquire(str(path), "erin", wait=600, check_run=dl.liveness, sleep=never_sleep)
    assert caught.value.run == "gone" and caught.value.waited < 1
    assert "has ended" in str(caught.value) and "deploy_break_lock=true" in str(caught.value)
    assert json.loads((path / dl.INFO).read_text())["id"] == "abc123", "the lock was broken unasked"


def test_an_alive_holder_is_waited_for(tmp_path, alive):
    path = tmp_path / "deploy.lock"
    hold(path, controller=HERE, pid=alive.pid, pid_start=dl.process_start(alive.pid), id="abc123")
    ticks = iter(range(100))
    slept = []
    with pytest.raises(dl.LockError) as caught:
        dl.acquire(str(path), "erin", wait=3, check_run=dl.liveness, clock=lambda: next(ticks), sleep=slept.append)
    assert caught.value.run == "alive" and slept, "it did not wait for a live run"


def test_acquire_records_the_process_start_of_a_run_here(tmp_path):
    holder, _waited, _broke = dl.acquire(str(tmp_path / "l"), "dave", controller=HERE, pid=os.getpid())
    assert holder["pid_start"] == dl.process_start(os.getpid())
    assert dl.liveness(holder) == "alive"


def test_a_break_by_id_spares_a_lock_taken_again_meanwhile(tmp_path):
    path = tmp_path / "deploy.lock"
    hold(path, id="new-one", token="theirs")
    with pytest.raises(dl.LockError):
        dl.acquire(str(path), "erin", break_id="old-one", sleep=never_sleep)
    assert json.loads((path / dl.INFO).read_text())["token"] == "theirs"


def test_release_removes_only_the_lock_carrying_the_token(tmp_path):
    path = tmp_path / "deploy.lock"
    holder, _w, _b = dl.acquire(str(path), "alice")
    with pytest.raises(dl.LockError, match="another run's token"):
        dl.release(str(path), "not-mine")
    assert path.exists()
    assert dl.release(str(path), holder["token"])[0] is True and not path.exists()
    assert dl.release(str(path), holder["token"]) == (False, None)
    assert os.listdir(tmp_path) == [], "something was left aside"


@pytest.mark.parametrize(
    "content, why",
    [
        (json.dumps({"owner": "old", "since": "2026-01-01T00:00:00+00:00"}), "records no token"),
        ("{torn", "cannot be read"),
        (None, "cannot be read"),
    ],
)
def test_release_leaves_a_lock_it_cannot_show_is_its_own(tmp_path, content, why):
    path = tmp_path / "deploy.lock"
    os.mkdir(path)
    if content is not None:
        (path / dl.INFO).write_text(content)
    with pytest.raises(dl.LockError, match=why) as caught:
        dl.release(str(path), "my-token")
    assert "left alone" in str(caught.value)
    assert path.is_dir() and (content is None or (path / dl.INFO).read_text() == content)


def test_release_racing_a_break_and_retake_keeps_the_new_lock(tmp_path, monkeypatch):
    """The release looked (its own token), then another run broke the lock
    and took it before the release removed anything: the new lock stays."""
    path = tmp_path / "deploy.lock"
    mine, _w, _b = dl.acquire(str(path), "alice")
    real = dl.read_holder
    calls = []

    def read_then_lose_it(where):
        seen = real(where)
        if not calls:
            calls.append(where)
            # Between this look and the removal: broken, and taken by bob.
            dl.release(where)
            dl.acquire(where, "bob")
        return seen

    monkeypatch.setattr(dl, "read_holder", read_then_lose_it)
    with pytest.raises(dl.LockError, match="held by bob"):
        dl.release(str(path), mine["token"])
    monkeypatch.undo()
    now = dl.read_holder(str(path))
    assert now["owner"] == "bob" and now["token"] != mine["token"]
    assert sorted(os.listdir(tmp_path)) == ["deploy.lock"], "the moved-aside lock was not put back"


def test_holding_takes_all_or_none(tmp_path, alive):
    free, held = str(tmp_path / "a" / "deploy.lock"), tmp_path / "b" / "deploy.lock"
    os.mkdir(tmp_path / "b")
    hold(held, controller=HERE, pid=alive.pid, pid_start=dl.process_start(alive.pid), id="x", token="t")
    with pytest.raises(dl.LockError, match="held by carol"), dl.holding([free, str(held)], "acme", wait=0):
        raise AssertionError("ran without every lock")
    assert not os.path.exists(free), "the lock taken first was not released"
    os.unlink(held / dl.INFO)
    os.rmdir(held)
    with dl.holding([free, str(held)], "acme") as holders:
        assert [h["owner"] for h in holders] == ["acme", "acme"]
        assert os.path.isdir(free) and held.is_dir()
    assert not os.path.exists(free) and not held.exists()


def test_holding_fails_at_once_on_a_gone_holder(tmp_path):
    path = tmp_path / "deploy.lock"
    hold(path, controller=HERE, pid=ended_pid(), id="x", token="t")
    with pytest.raises(dl.LockError) as caught, dl.holding([str(path)], "acme", wait=600, check_run=dl.liveness):
        raise AssertionError("ran without the lock")
    assert caught.value.run == "gone" and caught.value.waited < 1
