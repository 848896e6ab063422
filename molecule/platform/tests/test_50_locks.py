"""A lock whose run is known to be gone never makes anything wait (issue 23,
item 6; R64): site.yml's HAProxy reload (the same role and reload path,
molecule/shared/haproxy.yml) fails at once with the deploy's message, breaks
the lock with deploy_break_lock=true and records it in the audit log; a lock
whose run is alive is never broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from onebox_molecule import PROJECT, one_line, run_playbook

sys.path.insert(0, os.path.join(PROJECT, ".ansible", "collections"))
from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import process_start

LOCK = "/var/lib/onebox/shop/deploy.lock"
MARKER = "/var/lib/haproxy/onebox-reload-due"
PLAY = os.path.join(PROJECT, "molecule", "shared", "haproxy.yml")


def plant(target, pid, owner, pid_start=""):
    """A lock held by a run of this machine (this controller) with PID."""
    holder = {
        "owner": owner, "version": "deploy v9", "message": "deploy", "host": "platform",
        "controller": socket.gethostname(), "pid": pid, "pid_start": pid_start,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "id": f"planted{pid}", "token": "not-yours",
    }  # fmt: skip
    target.check_output(f"mkdir -p {LOCK} && touch {MARKER}")
    target.check_output(f"cat > {LOCK}/holder.json <<'EOF'\n{json.dumps(holder)}\nEOF")


def reload(*extra):
    proc = run_playbook(PLAY, "-e", "onebox_hosts=production", *extra, timeout=900, ONEBOX_WHO="lock-test")
    return proc.returncode, one_line(proc)


def test_a_dead_runs_lock_fails_the_reload_at_once_then_is_broken_on_request(target):
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    plant(target, dead.pid, "ci-job-1234")
    try:
        rc, out = reload()
        assert rc != 0 and "ended without releasing it" in out and "deploy_break_lock=true" in out, out[-2500:]
        assert "waited 0 s" in out, out[-2500:]
        assert target.file(f"{LOCK}/holder.json").exists and target.file(MARKER).exists
        rc, out = reload("-e", "deploy_break_lock=true")
        assert rc == 0, out[-2500:]
        assert not target.file(LOCK).exists and not target.file(MARKER).exists
        audit = target.check_output("tail -n 5 /var/lib/onebox/shop/audit.log")
        assert "lock-broken" in audit and "ci-job-1234" in audit and "by=lock-test" in audit, audit
    finally:
        target.run(f"rm -rf {LOCK} {MARKER}")


def test_a_live_runs_lock_is_never_broken(target):
    alive = subprocess.Popen(["sleep", "300"])
    try:
        plant(target, alive.pid, "a-deploy-in-progress", process_start(alive.pid))
        # A holder that is alive is waited for: with no time to wait, refused.
        rc, out = reload("-e", "deploy_break_lock=true", "-e", "haproxy_reload_lock_wait=0")
        assert rc != 0 and "NOT broken" in out, out[-2500:]
        assert "a-deploy-in-progress" in target.check_output(f"cat {LOCK}/holder.json")
    finally:
        alive.kill()
        target.run(f"rm -rf {LOCK} {MARKER}")
