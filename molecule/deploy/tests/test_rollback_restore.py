"""A rollback that restores the database loses nothing (issue: day-one
failures, item 3): the live database is backed up first (recorded with the
rollback, so the rollback can be undone), the maintenance page shows during
the restore, traffic moves only after it, and a failure leaves the site in
maintenance with a release that fits the database - never new code on the
old schema or old code on the new one."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from test_deploy import HOST, get, only_version, play, releases


def psql(target, sql, db="demo"):
    return target.check_output(
        f"docker exec -i demo-postgres psql -U postgres -X -A -t -v ON_ERROR_STOP=1 -d {db} -c {json.dumps(sql)}"
    )


def notes(target, db="demo"):
    return psql(target, "SELECT string_agg(t, ',' ORDER BY t) FROM notes", db)


def status(base_url):
    req = urllib.request.Request(base_url + "/", headers={"Host": HOST})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def deployed_v2(target, base_url):
    """v2 deployed over v1 with a note written before (in v2's pre-deploy
    backup) and one written while v2 served (only in the live database)."""
    psql(target, "DROP TABLE IF EXISTS notes; CREATE TABLE notes (t text); INSERT INTO notes VALUES ('before-v2')")
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    psql(target, "INSERT INTO notes VALUES ('under-v2')")
    assert only_version(base_url) == {"v2"}
    return releases(target)[-1]


def test_an_unconfirmed_restore_changes_nothing(target, base_url, deployed_v2):
    rc, out, _s = play("rollback.yml", "-e", "rollback_restore_db=true")
    assert rc != 0 and "rollback_confirm_restore=true" in out and "Nothing was changed" in out, out[-3000:]
    assert only_version(base_url) == {"v2"}
    assert notes(target) == "before-v2,under-v2"


def test_a_failed_restore_leaves_the_maintenance_page_and_the_data(target, base_url, deployed_v2):
    dump = deployed_v2["backup"]
    target.check_output(f"cp -p {dump} /tmp/good.dump")
    target.check_output(f"printf 'XXXX' | dd of={dump} bs=1 seek=100 conv=notrunc status=none")
    try:
        rc, out, _s = play("rollback.yml", "-e", "rollback_restore_db=true", "-e", "rollback_confirm_restore=true")
    finally:
        target.check_output(f"cp -p /tmp/good.dump {dump}")
    assert rc != 0 and "checksum mismatch" in out and "is unchanged" in out, out[-3000:]
    assert status(base_url) == 503
    assert notes(target) == "before-v2,under-v2"
    assert releases(target)[-1] == deployed_v2
    colour = target.check_output("cat /var/lib/onebox/demo/maintenance-colour").strip()
    assert colour == deployed_v2["colour"]
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v2"}


def test_a_rollback_with_restore_keeps_a_copy_and_can_be_undone(target, base_url, deployed_v2):
    rc, out, _s = play("rollback.yml", "-e", "rollback_restore_db=true", "-e", "rollback_confirm_restore=true")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v1"}
    assert notes(target) == "before-v2"
    last = releases(target)[-1]
    assert last["action"] == "rollback" and last["version"] == "v1"
    assert last["restored_from"] == deployed_v2["backup"]
    assert "/prerollback-demo-" in last["backup"]
    assert not target.file("/var/lib/onebox/demo/maintenance-colour").exists
    # Undo: the copy taken first holds what v2 wrote.
    rc, out, _s = play("restore.yml", "-e", f"restore_backup={last['backup']}", "-e", "restore_target=demo_undo")
    assert rc == 0, out[-3000:]
    assert notes(target, "demo_undo") == "before-v2,under-v2"
    psql(target, "DROP DATABASE demo_undo", "postgres")


def test_a_target_that_fails_after_the_restore_leaves_the_maintenance_page(target, base_url):
    """The target release dies during the verification after the restore
    (a fault injected mid-rollback): the old code must not come back on the
    restored database, and the new code must not serve it either, so the
    site shows the maintenance page with the restored data and the target
    colour as the one maintenance=off brings back once it is fixed."""
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    psql(target, "INSERT INTO notes VALUES ('v2-only')")
    v2_colour = releases(target)[-1]["colour"]
    v1_colour = "green" if v2_colour == "blue" else "blue"
    since = target.check_output("date +%s").strip()
    proc = play(
        "rollback.yml",
        "-e",
        "rollback_restore_db=true",
        "-e",
        "rollback_confirm_restore=true",
        "-e",
        "app_verify_seconds=30",
        background=True,
    )
    seen = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            version = get(base_url)[1]["version"]
        except (urllib.error.URLError, OSError, ValueError):
            version = "error"
        seen[version] = seen.get(version, 0) + 1
        if version == "v1":
            break
        time.sleep(0.1)
    assert seen.get("v1"), f"v1 never went live: {seen}"
    target.check_output(f"docker kill demo-{v1_colour}")
    after = {}
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            version = get(base_url)[1]["version"]
        except (urllib.error.URLError, OSError, ValueError):
            version = "error"
        after[version] = after.get(version, 0) + 1
        time.sleep(0.1)
    out = " ".join(proc.communicate(timeout=60)[0].decode().split())
    print(f"before the kill {seen}, after it {after}")
    assert proc.returncode != 0 and "The site shows the maintenance page" in out, out[-3000:]
    # Never the new code on the restored (old) data.
    assert "v2" not in after, after
    assert status(base_url) == 503
    assert notes(target) == "before-v2"
    assert target.check_output("cat /var/lib/onebox/demo/maintenance-colour").strip() == v1_colour
    audit = target.check_output("cat /var/lib/onebox/demo/audit.log")
    assert any("rollback-failed" in line for line in audit.splitlines()[-3:]), audit[-1000:]
    # What v2 wrote is in the copy taken before the restore.
    newest = target.check_output(
        f"find /var/backups/onebox -name 'prerollback-demo-*' -newermt @{since} -printf '%T@ %p\\n' | sort -n | tail -1"
    ).split()
    assert newest, "no pre-rollback backup was written"
    # Fixed (the container started again): maintenance=off brings v1 back.
    target.check_output(f"docker start demo-{v1_colour}")
    rc, out, _s = play("maintenance.yml", "-e", "maintenance=off")
    assert rc == 0, out[-3000:]
    assert only_version(base_url) == {"v1"}
