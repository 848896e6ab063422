# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deploy lock: a directory made atomically with mkdir, holding who,
when and why (holder.json). Standard library only.

The holder records the controller it was taken from, the PID of the run's
process there and that process's start (boot id and start tick), so that
whoever sees the lock taken on that same machine can tell a run that still
goes from one that died, even when the PID was given to another process
since. A lock is only ever removed after it was renamed aside and found to
be the very lock meant (its token, or the id of the holder whose run was
found gone): a release or a break never removes a lock another run took in
the meantime."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

INFO = "holder.json"


class LockError(Exception):
    """The lock could not be taken or released; the message says by whom.
    ``holder``: who holds it (or None); ``run``: 'alive', 'gone' or
    'unknown' when that was checked, else None; ``waited``: seconds waited."""

    def __init__(self, message, holder=None, run=None, waited=0.0):
        super().__init__(message)
        self.holder = holder
        self.run = run
        self.waited = waited


def now_utc():
    return dt.datetime.now(dt.timezone.utc)


def read_holder(path):
    """The holder of the lock at PATH, None when there is no lock. A lock
    whose holder.json is missing or damaged (mkdir happened, the file is not
    written yet, or a crash) reads as owner 'unknown' with 'unreadable'."""
    try:
        with open(os.path.join(path, INFO)) as fh:
            holder = json.load(fh)
        if isinstance(holder, dict):
            return holder
    except (OSError, ValueError):
        pass
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return {
        "owner": "unknown",
        "since": dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat(timespec="seconds"),
        "unreadable": True,
    }


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


# --- is the holder's run still going? ---------------------------------------------


def process_start(pid, proc="/proc"):
    """'BOOT_ID:START_TICK' of process PID on this machine, '' when it cannot
    be read (no such process, no /proc). The pair names one process for
    good: a PID given again, or the same PID after a reboot, differs."""
    try:
        with open(os.path.join(proc, str(int(pid)), "stat")) as fh:
            stat = fh.read()
        with open(os.path.join(proc, "sys", "kernel", "random", "boot_id")) as fh:
            boot = fh.read().strip()
        # Field 22 (starttime); the name in field 2 may hold spaces and ')'.
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, ValueError, IndexError):
        return ""
    return f"{boot}:{start}"


def _exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    except OSError:
        return True  # cannot tell: count it as there, so it is never broken
    return True


def _command_line(pid, proc):
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as fh:
            return fh.read().replace(b"\0", b" ")
    except OSError:
        pass
    try:  # no /proc (a macOS controller): ps knows
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def liveness(holder, here=None, proc="/proc"):
    """Whether the run holding the lock still goes, seen from THIS machine:
    'alive' (its process is still there), 'gone' (it was started here and its
    process has ended, or its PID now belongs to another process) or
    'unknown' (it was started on another machine, or recorded no process).
    A process that exists but cannot be told apart from the holder's counts
    as alive: a lock is never broken on a guess."""
    controller, pid = holder.get("controller"), holder.get("pid")
    if not controller or not pid or controller != (here or socket.gethostname()):
        return "unknown"
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return "unknown"
    if pid <= 1:
        return "unknown"
    if not _exists(pid):
        return "gone"
    if holder.get("pid_start"):
        now = process_start(pid, proc)
        if not now:
            return "alive"
        return "alive" if now == holder["pid_start"] else "gone"
    # A holder written before starts were recorded: the command line says
    # whether that PID is still a run of ours.
    cmdline = _command_line(pid, proc)
    if cmdline is None:
        return "alive"
    return "alive" if b"ansible" in cmdline or b"onebox" in cmdline else "gone"


def combine(*views):
    """One verdict from several places' views of the same run: a run anyone
    sees alive is alive; else one anyone sees gone is gone."""
    if "alive" in views:
        return "alive"
    if "gone" in views:
        return "gone"
    return "unknown"


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


# --- taking, breaking, releasing ---------------------------------------------------


def _set_aside(path, meant):
    """Remove the lock at PATH if it is the one MEANT(holder) describes.

    The directory is renamed aside first (atomic: from then on the lock is
    free and a new taker makes a new directory), then what was renamed is
    checked. When it is not the lock meant (another run took the lock between
    the caller's look and the rename) it is put back, unless yet another run
    holds the path already; then it stays aside, and the caller is told.
    Returns (removed holder or None, put back: bool)."""
    parent, name = os.path.split(path.rstrip("/"))
    aside = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:10]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None, True
    moved = read_holder(aside)
    if moved is not None and meant(moved):
        shutil.rmtree(aside, ignore_errors=True)
        return moved, True
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return None, False
    try:
        os.replace(os.path.join(aside, INFO), os.path.join(path, INFO))
    except FileNotFoundError:
        pass
    shutil.rmtree(aside, ignore_errors=True)
    return None, True


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
    pid_start=None,
    check_run=None,
    poll=0.5,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Take the lock or raise LockError. Returns (holder dict, waited s, broke).

    A held lock is broken only when asked: ``break_id`` names the very holder
    to break (its public id, after the caller checked that its run is gone),
    or ``break_stale`` with a holder older than ``stale_after``.

    ``check_run(holder)`` ('alive' / 'gone' / 'unknown', e.g. ``liveness``):
    a holder whose run is gone makes it fail at once instead of waiting for a
    release that never comes. ``pid_start`` (see process_start) is recorded
    with ``pid``; None: read here when ``controller`` is this machine."""
    parent = os.path.dirname(path.rstrip("/"))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    if pid_start is None:
        pid_start = process_start(pid) if pid and controller == socket.gethostname() else ""
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
            named = bool(break_id) and holder.get("id") == break_id
            if named or (break_stale and age_seconds(holder) >= stale_after):

                def meant(moved, holder=holder):
                    if break_id:
                        return moved.get("id") == break_id
                    return age_seconds(moved) >= stale_after and moved.get("id") == holder.get("id")

                removed, _back = _set_aside(path, meant)
                if removed is not None:
                    broke = removed
                continue
            waited = round(clock() - start, 1)
            run = check_run(holder) if check_run is not None else None
            if run == "gone":
                raise LockError(refusal(path, holder, waited, run), holder, run, waited) from None
            if waited >= wait:
                stale = age_seconds(holder) >= stale_after
                hint = (
                    " It looks stale (older than stale_after): if that deploy is dead, run again with "
                    "the lock broken explicitly (deploy_break_lock=true)."
                    if stale
                    else " Wait for it to finish, or raise the wait time."
                )
                raise LockError(
                    f"deploy lock {path} is held by {describe(holder)}; waited {wait:g} s.{hint}", holder, run, waited
                ) from None
            sleep(min(poll, max(wait - waited, 0.01)))
    holder = {
        "owner": owner,
        "version": version,
        "message": message,
        "host": socket.gethostname(),
        "controller": controller,
        "pid": int(pid or 0),
        "pid_start": pid_start or "",
        "since": now_utc().isoformat(timespec="seconds"),
        "id": uuid.uuid4().hex[:12],
        "token": uuid.uuid4().hex,
    }
    tmp = os.path.join(path, f".{INFO}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(holder, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(path, INFO))
    except BaseException:
        # A lock nobody could ever show to be theirs helps no one.
        shutil.rmtree(path, ignore_errors=True)
        raise
    return holder, round(clock() - start, 3), broke


def release(path, token=None):
    """Release the lock. Returns (released, holder).

    With a token, only the lock whose holder.json carries exactly that token
    is removed; one with another token, no token, or an unreadable
    holder.json is left alone (LockError says whose it is). Without a token
    the lock is removed whoever holds it (an operator's explicit unlock)."""
    holder = read_holder(path)
    if holder is None:
        return False, None
    if token:
        if holder.get("token") != token:
            raise LockError(_not_ours(path, holder), holder)

        def meant(moved):
            return moved.get("token") == token

    else:

        def meant(moved):
            return moved.get("id") == holder.get("id") and moved.get("since") == holder.get("since")

    removed, back = _set_aside(path, meant)
    if removed is not None:
        return True, removed
    now = read_holder(path)
    if now is None and back:
        return False, None  # someone else removed it meanwhile
    if not back:
        raise LockError(
            f"deploy lock {path} changed hands while it was being released: the lock that was there is kept "
            f"aside beside it, and {describe(now)} holds the path now. Check that no two deploys ran at once.",
            now,
        )
    raise LockError(_not_ours(path, now), now)


def _not_ours(path, holder):
    if holder.get("unreadable"):
        why = "its holder.json cannot be read, so it cannot be shown to be this run's"
    elif not holder.get("token"):
        why = "it records no token, so it cannot be shown to be this run's"
    else:
        why = "it carries another run's token"
    return (
        f"deploy lock {path} is now held by {describe(holder)}, not by this run ({why}): left alone. "
        "This run's own lock was broken while it ran; see the app's audit log for who broke it."
    )


@contextlib.contextmanager
def holding(paths, owner, version="", message="", wait=0.0, check_run=None, controller="", pid=0):
    """Take every lock in PATHS (in that order, sharing one deadline of WAIT
    seconds), yield their holders, release them all after. A lock that
    cannot be taken releases those already taken and raises LockError."""
    taken = []
    deadline = time.monotonic() + float(wait)
    try:
        for path in paths:
            holder, _waited, _broke = acquire(
                path,
                owner,
                version=version,
                message=message,
                wait=max(deadline - time.monotonic(), 0.0),
                controller=controller,
                pid=pid,
                check_run=check_run,
            )
            taken.append((path, holder))
        yield [holder for _path, holder in taken]
    finally:
        problems = []
        for path, holder in reversed(taken):
            try:
                release(path, holder["token"])
            except LockError as exc:
                problems.append(str(exc))
        if problems and sys.exc_info()[0] is None:
            raise LockError(" ".join(problems))
