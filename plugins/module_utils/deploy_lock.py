# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deploy lock: a directory made atomically with mkdir, holding who,
when and why. Standard library only."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import time
import uuid

INFO = "holder.json"


class LockError(Exception):
    """The lock could not be taken or released; the message says by whom."""


def now_utc():
    return dt.datetime.now(dt.timezone.utc)


def read_holder(path):
    try:
        with open(os.path.join(path, INFO)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        # mkdir happened but holder.json is not written yet (or is damaged).
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        return {"owner": "unknown", "since": dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat()}


def age_seconds(holder, now=None):
    try:
        since = dt.datetime.fromisoformat(holder["since"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return ((now or now_utc()) - since).total_seconds()


def describe(holder):
    if not holder:
        return "nobody"
    text = f"{holder.get('owner', 'unknown')} since {holder.get('since', '?')}"
    if holder.get("version"):
        text += f" deploying {holder['version']}"
    if holder.get("message"):
        text += f" ({holder['message']})"
    if holder.get("controller"):
        text += f" from {holder['controller']} (pid {holder.get('pid', '?')})"
    elif holder.get("host"):
        text += f" on {holder['host']}"
    return text


def liveness(holder, here=None, proc="/proc"):
    """Whether the run holding the lock still runs, seen from THIS controller:
    'alive' (its ansible process is still there), 'gone' (it was started here
    and its process has ended) or 'unknown' (it was started on another
    machine, or recorded no process)."""
    controller, pid = holder.get("controller"), holder.get("pid")
    if not controller or not pid or controller != (here or socket.gethostname()):
        return "unknown"
    try:
        with open(os.path.join(proc, str(int(pid)), "cmdline"), "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ")
    except (OSError, ValueError):
        return "gone"
    # A PID the system gave to something else since is not our run.
    return "alive" if b"ansible" in cmdline else "gone"


def refusal(path, holder, waited, state):
    """What a refused run is told, by whether the holder still runs."""
    text = f"deploy lock {path} is held by {describe(holder)}; waited {waited:g} s."
    if state == "alive":
        return (
            f"{text} That run is still going (pid {holder.get('pid')} on {holder.get('controller')}): wait for it "
            "to finish (app_lock_wait), or stop it first. Breaking the lock of a live run would let two deploys race."
        )
    if state == "gone":
        return (
            f"{text} That run has ended without releasing it (pid {holder.get('pid')} is gone from "
            f"{holder.get('controller')}): run again with the lock broken explicitly (deploy_break_lock=true)."
        )
    where = f"on {holder['controller']}, another machine" if holder.get("controller") else "by an unknown process"
    return (
        f"{text} It was taken {where}, so whether that run still goes cannot be checked from here: if you "
        "know it has ended (a cancelled CI job, a closed laptop), run again with deploy_break_lock=true; "
        "otherwise wait for it."
    )


def acquire(
    path,
    owner,
    version="",
    message="",
    wait=0.0,
    break_stale=False,
    stale_after=3600.0,
    break_id=None,
    controller="",
    pid=0,
    poll=0.5,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Take the lock or raise LockError. Returns (holder dict, waited s, broke).

    A held lock is broken only when asked: ``break_id`` names the very holder
    to break (its public id, after the caller checked that its run is gone),
    or ``break_stale`` with a holder older than ``stale_after``."""
    parent = os.path.dirname(path.rstrip("/"))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    start = clock()
    broke = None
    while True:
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            holder = read_holder(path)
            if holder is None:
                continue  # released between mkdir and read: try again
            named = break_id and holder.get("id") == break_id
            if named or (break_stale and age_seconds(holder) >= stale_after):
                shutil.rmtree(path, ignore_errors=True)
                broke = holder
                continue
            if clock() - start >= wait:
                stale = age_seconds(holder) >= stale_after
                hint = (
                    " It looks stale (older than stale_after): if that deploy is dead, run again with "
                    "the lock broken explicitly (deploy_break_lock=true)."
                    if stale
                    else " Wait for it to finish, or raise the wait time."
                )
                raise LockError(f"deploy lock {path} is held by {describe(holder)}; waited {wait:g} s.{hint}") from None
            sleep(poll)
    holder = {
        "owner": owner,
        "version": version,
        "message": message,
        "host": socket.gethostname(),
        "controller": controller,
        "pid": int(pid or 0),
        "since": now_utc().isoformat(timespec="seconds"),
        "id": uuid.uuid4().hex[:12],
        "token": uuid.uuid4().hex,
    }
    tmp = os.path.join(path, f".{INFO}.tmp")
    with open(tmp, "w") as fh:
        json.dump(holder, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(path, INFO))
    return holder, round(clock() - start, 3), broke


def release(path, token=None):
    """Release the lock. With a token, only if we still hold it."""
    holder = read_holder(path)
    if holder is None:
        return False, None
    if token and holder.get("token") not in (None, token):
        raise LockError(f"deploy lock {path} is now held by {describe(holder)}, not by this run: left alone")
    shutil.rmtree(path, ignore_errors=True)
    return True, holder
