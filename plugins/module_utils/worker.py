# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replacing a worker (an app with no HTTP) by another version.

A worker has two containers, like a web app's colours: the one that runs
and the stopped one holding the previous version (so a rollback starts it
again). ``release`` puts NEW in place of OLD in the order the app chose:

- ``start-first``: NEW is started and must become healthy (its Docker
  health check, or running without a restart for ``settle`` seconds when the
  image has none) before OLD gets SIGTERM: no gap, but for a moment both run.
- ``stop-first``: OLD gets SIGTERM and is waited for first (jobs that must
  never run twice), then NEW is started: a gap, no overlap.

Either way OLD gets ``docker stop -t STOP_TIMEOUT``: SIGTERM, then its
stop timeout to finish the job in hand before Docker kills it. When NEW
never becomes healthy it is stopped and OLD is left running (start-first)
or started again (stop-first), and WorkerError says so.

The app_state and worker_release modules and the on-server ``onebox``
program use it. Standard library only; DOCKER runs ``docker ARGS`` and
returns (rc, stdout, stderr).
"""

from __future__ import annotations

import json
import time

ORDERS = ("start-first", "stop-first")


class WorkerError(Exception):
    """A replacement that did not happen; the message says what runs now."""


def inspect(docker, name):
    """`docker container inspect NAME`'s object, or None when it does not exist."""
    rc, out, err = docker(["container", "inspect", name])
    if rc != 0:
        if "no such" in err.lower():
            return None
        raise WorkerError(f"docker container inspect {name} failed (rc {rc}): {err.strip()}")
    try:
        return json.loads(out)[0]
    except (ValueError, IndexError) as exc:
        raise WorkerError(f"docker container inspect {name} printed no container: {exc}") from exc


def health(container):
    """'healthy', 'starting', 'unhealthy', 'running' (no health check) or 'exited'."""
    state = (container or {}).get("State") or {}
    if not state.get("Running"):
        return "exited"
    return (state.get("Health") or {}).get("Status") or "running"


def _logs(docker, name, lines=5):
    rc, out, err = docker(["logs", "--tail", str(lines), name])
    text = (out + err).strip().replace("\n", " | ")
    return text[-400:] if rc == 0 else ""


def wait_healthy(docker, name, timeout, settle=3.0, clock=time.monotonic, sleep=time.sleep):
    """Wait until container NAME is healthy (or, without a health check, has run
    SETTLE seconds without restarting). Raises WorkerError with its last log lines."""
    start = clock()
    restarts = None
    while True:
        container = inspect(docker, name)
        status = health(container)
        count = (container or {}).get("RestartCount", 0)
        restarts = count if restarts is None else restarts
        if status == "healthy":
            return status
        if status == "running" and count == restarts and clock() - start >= settle:
            return status
        if status in ("exited", "unhealthy") or count != restarts:
            code = ((container or {}).get("State") or {}).get("ExitCode")
            raise WorkerError(
                f"{name} is {status if count == restarts else 'restarting'}"
                f"{f' (exit code {code})' if status == 'exited' else ''}; its last lines: {_logs(docker, name)}"
            )
        if clock() - start > timeout:
            raise WorkerError(
                f"{name} was not healthy after {timeout:g}s (health: {status}); its last lines: {_logs(docker, name)}"
            )
        sleep(0.5)


def _run(docker, args, what):
    rc, out, err = docker(args)
    if rc != 0:
        raise WorkerError(f"{what} failed (rc {rc}): {err.strip() or out.strip()}")


def stop(docker, name, stop_timeout, clock=time.monotonic):
    """docker stop -t STOP_TIMEOUT NAME; how it ended (ms taken, exit code, killed)."""
    begin = clock()
    _run(docker, ["stop", "-t", str(int(stop_timeout)), name], f"docker stop {name}")
    took = int((clock() - begin) * 1000)
    state = (inspect(docker, name) or {}).get("State") or {}
    code = state.get("ExitCode")
    # 137 = SIGKILL: the job in hand outlived the stop timeout.
    return dict(stop_ms=took, exit_code=code, killed=code == 137)


def release(docker, new, old, order, stop_timeout, health_timeout, settle=3.0, clock=time.monotonic, sleep=time.sleep):
    """Put container NEW (created, stopped) in place of OLD (running, or '' on
    a first deploy) in ORDER. Returns what happened, with its times in ms."""
    if order not in ORDERS:
        raise WorkerError(f"worker order {order!r} is unknown; use start-first or stop-first")
    begin = clock()
    out = dict(order=order, new=new, old=old or "", old_stop={}, gap_ms=0, overlap_ms=0)

    def start_new():
        _run(docker, ["start", new], f"docker start {new}")
        try:
            out["health"] = wait_healthy(docker, new, health_timeout, settle, clock, sleep)
        except WorkerError:
            docker(["stop", "-t", str(int(stop_timeout)), new])
            raise

    if not old:
        start_new()
    elif order == "start-first":
        started = clock()
        try:
            start_new()
        except WorkerError as exc:
            raise WorkerError(f"{exc}. {new} was stopped; {old} keeps running, nothing changed.") from exc
        out["old_stop"] = stop(docker, old, stop_timeout, clock)
        out["overlap_ms"] = int((clock() - started) * 1000)
    else:
        out["old_stop"] = stop(docker, old, stop_timeout, clock)
        stopped = clock()
        try:
            start_new()
        except WorkerError as exc:
            _run(docker, ["start", old], f"docker start {old}")
            raise WorkerError(f"{exc}. {new} was stopped and {old} started again.") from exc
        out["gap_ms"] = int((clock() - stopped) * 1000)
    out["switch_ms"] = int((clock() - begin) * 1000)
    return out
