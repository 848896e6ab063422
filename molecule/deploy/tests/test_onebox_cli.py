"""The incident path without a laptop (issue 11, item 5): on the server,
`sudo onebox status`, `onebox rollback APP` and `onebox maintenance APP on|off`
use the same engine, lock and history as the playbooks - what one writes,
the other reads."""

from __future__ import annotations

import json
import time
import urllib.error

from test_deploy import Load, get, only_version, play, record, releases


def onebox(target, *args):
    return target.run("onebox " + " ".join(args))


def test_status_rollback_and_maintenance_on_the_server(base_url, target):
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    live = releases(target)[-1]["colour"]
    status = onebox(target, "status", "demo")
    assert status.rc == 0, status.stderr
    assert f"demo: live on {live} (v2)" in status.stdout and "rollback target: v1" in status.stdout, status.stdout
    # The same facts for a script, with its exit code (0 healthy).
    js = onebox(target, "status", "demo", "--json")
    assert js.rc == 0, js.stderr
    (app,) = json.loads(js.stdout)["apps"]
    assert (app["health"], app["live"], app["version"], app["rollback_target"]) == ("healthy", live, "v2", "v1"), app
    logs = onebox(target, "logs", "demo", "--tail", "5", "--json")
    assert logs.rc == 0 and json.loads(logs.stdout)["colour"] == live, logs.stdout + logs.stderr

    with Load(base_url) as load:
        t0 = time.monotonic()
        res = onebox(target, "rollback", "demo")
        seconds = round(time.monotonic() - t0, 2)
    record("onebox rollback (on the server)", load, seconds, res.rc)
    assert res.rc == 0, res.stdout + res.stderr
    assert "rolled back from v2 to v1" in res.stdout
    assert load.failed == 0, load.errors[:5]
    assert only_version(base_url) == {"v1"}
    last = releases(target)[-1]
    assert last["action"] == "rollback" and last["version"] == "v1" and last["via"] == "onebox"
    assert last["previous_version"] == "v2" and last["colour"] != live
    audit = target.check_output("tail -1 /var/lib/onebox/demo/audit.log")
    assert "rollback-ok from=v2 to=v1" in audit and "via=onebox" in audit
    # The playbooks read what the program wrote: a second rollback must not
    # roll forward to v2, the release just rolled back.
    again = onebox(target, "status", "demo")
    assert "rollback target: v2" not in again.stdout, again.stdout

    res = onebox(target, "maintenance", "demo", "on")
    assert res.rc == 0, res.stdout + res.stderr
    try:
        get(base_url)
        code = 200
    except urllib.error.HTTPError as exc:
        code = exc.code
    assert code == 503
    status = onebox(target, "status", "demo")
    # Degraded, not down: the maintenance page serves.
    assert status.rc == 1 and "IN MAINTENANCE" in status.stdout and "[DEGRADED:" in status.stdout, status.stdout
    # ... and the playbook brings it back from the program's maintenance.
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v1"}


def test_the_program_respects_the_deploy_lock(target):
    target.check_output(
        "mkdir -p /var/lib/onebox/demo/deploy.lock && echo "
        """'{"owner": "alice", "version": "v9", "since": "2026-01-01T00:00:00+00:00"}' """
        "> /var/lib/onebox/demo/deploy.lock/holder.json"
    )
    try:
        before = target.check_output("wc -l < /var/lib/onebox/demo/releases.jsonl")
        res = onebox(target, "rollback", "demo")
        assert res.rc == 2 and "held by alice" in res.stderr and "Nothing was changed" in res.stderr, res.stderr
        assert target.check_output("wc -l < /var/lib/onebox/demo/releases.jsonl") == before
    finally:
        target.check_output("rm -rf /var/lib/onebox/demo/deploy.lock")


def test_unknown_app_and_slow_path_are_refused_clearly(target):
    res = onebox(target, "rollback", "nope")
    assert res.rc == 2 and "no app 'nope' on this server (apps: demo)" in res.stderr
    # The standby colour runs v2 now (left by the rollback), so going "to v0" needs the playbook.
    res = onebox(target, "rollback", "demo", "--to", "v0")
    assert res.rc == 2 and "Run playbooks/rollback.yml -e rollback_to=v0" in res.stderr, res.stderr
