"""Lose the server, lose nothing (SPEC R56), and nothing destroys the wrong
data (R63).

The target runs the whole stack (site.yml on the app model): the shop app
with an upload volume, its database in PostgreSQL with pgBackRest WAL
archiving, a Redis of its own, restic snapshots and the WAL mirror to the
off-site host, which lets the server only add. First, on the live target:
its own credentials fail to delete or overwrite a snapshot and a WAL file;
the prune run (offsite-prune.yml, on the off-site host with its own access)
applies retention and prunes the WAL the expired base backup needed;
recover.yml refuses the server because it serves traffic. Then, while a row
goes into PostgreSQL every second, the target is killed without warning
(docker kill); recover.yml rebuilds everything onto a new server. Measured:
RPO (the last row written on the target against the newest row on the new
server), RTO (from the start of recover.yml to the app answering its last
release), and what else came back (upload checksums, Redis keys, release
history). Then, on the new server now live: a restore to just before v2's
migration under the deploy lock and maintenance, recover.yml over the live
server (safety copy, undo command, v1 deployed, not v2), and the bad inputs:
a target before the oldest base backup, a wrong restic password, an
unreachable host, tampered off-site copies. This file runs after
test_backup.py (file order): it kills the target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request

import pytest
from onebox_molecule import PROJECT, container_ip, host, one_line, record_json, run_playbook

TARGET = "onebox-backup-target"
NEW = "onebox-backup-recovery"
OFFSITE = "onebox-backup-offsite"
RESULTS = os.path.join(PROJECT, "tests", "output", "recovery.json")
UPLOADS = "/www/uploads"
RESTIC = "/srv/onebox/restic/box"
WAL = "/srv/onebox/wal"
STANZA = "shop-postgres"
# The server's own credentials, as the offsite role wrote them.
SSH = "ssh -i /root/.ssh/onebox_offsite -o UserKnownHostsFile=/etc/onebox/offsite/known_hosts -o BatchMode=yes"
MIRROR = "onebox@onebox-backup-offsite:"


def psql(server, sql):
    """SQL in the shop database of SERVER (a container name), through the
    nested database container, as the official image's root exec does."""
    proc = subprocess.run(
        [
            "docker",
            "exec",
            server,
            "docker",
            "exec",
            "shop-postgres",
            "psql",
            "-U",
            "postgres",
            "-d",
            "shop",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"psql on {server}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def notes_sql(server, sql):
    """SQL in the worker notes' database, in its own PostgreSQL (notes-postgres)."""
    return host(server).check_output(
        f'docker exec notes-postgres psql -U postgres -d notes -XAt -v ON_ERROR_STOP=1 -c "{sql}"'
    )


NOTES_ROWS = 42


class Writer:
    """One row a second into the target's database; remembers each row that
    was committed (id and time), until stopped or the server is gone.
    Bounded to 15 minutes."""

    def __init__(self):
        self.rows = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        end = time.monotonic() + 900
        while not self.stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                out = psql(TARGET, "INSERT INTO ticks DEFAULT VALUES RETURNING id, extract(epoch FROM at)")
                row_id, at = out.splitlines()[0].split("|")
                self.rows.append((int(row_id), float(at)))
            except (AssertionError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def answered(server_ip, version, timeout=2):
    try:
        req = urllib.request.Request(f"http://{server_ip}/health", headers={"Host": "localhost"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read()).get("version") == version
    except (OSError, ValueError):
        return False


def deploy(version, limit="targets"):
    proc = run_playbook("deploy.yml", "-l", limit, "-e", "app=shop", "-e", f"version={version}", timeout=600)
    assert proc.returncode == 0, one_line(proc)[-3000:]


def dr(server, *args, config=None):
    """onebox-dr on SERVER: (exit code, parsed JSON or the error text)."""
    argv = ["docker", "exec", server, "onebox-dr"] + (["--config", config] if config else []) + list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode == 0:
        return 0, json.loads(proc.stdout)
    return proc.returncode, (proc.stderr + proc.stdout).strip()


def checksums(server, volume="onebox_shop_uploads"):
    out = host(server).check_output(
        f"cd $(docker volume inspect -f '{{{{.Mountpoint}}}}' {volume}) && find . -type f -exec sha256sum {{}} + | sort"
    )
    return out.splitlines()


def redis_cli(server, args):
    """redis-cli as the shop's own ACL user (the default user is off); the
    password from its file on the server, in the environment, not on a
    command line."""
    return host(server).check_output(
        'REDISCLI_AUTH="$(cat /etc/onebox/shop/redis.password)" '
        f"docker exec -e REDISCLI_AUTH shop-redis redis-cli --user shop --no-auth-warning --raw {args}"
    )


def redis_dump(server):
    keys = redis_cli(server, "KEYS 'onebox:*'").split()
    return {k: redis_cli(server, f"GET {k}") for k in sorted(keys)}


def audit_time(audit, action, version):
    """The time of the first ACTION version=VERSION line of an audit log."""
    for line in audit.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == action and f"version={version}" in fields[2:]:
            return time.mktime(time.strptime(fields[0], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    raise AssertionError(f"no {action} version={version} in the audit log")


def as_server(server, script):
    """A Python SCRIPT on SERVER (its stdout)."""
    proc = subprocess.run(
        ["docker", "exec", "-i", server, "python3", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def rest_as_server(method, path, data=b""):
    """A request to the restic endpoint with the target's own login and CA."""
    return as_server(
        TARGET,
        f"""
import base64, json, ssl, urllib.error, urllib.request
cfg = json.load(open("/etc/onebox/offsite.json"))
auth = cfg["rest_user"] + ":" + open(cfg["rest_password_file"]).read().strip()
req = urllib.request.Request(cfg["repository"][5:] + {path!r}, data={data!r} or None, method={method!r})
req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    urllib.request.urlopen(req, context=ssl.create_default_context(cafile=cfg["cacert"]), timeout=20)
    print(200)
except urllib.error.HTTPError as exc:
    print(exc.code)
""",
    )


def held(server, root):
    """sha256 of every file under ROOT on SERVER (restic's lock files aside)."""
    return host(server).check_output(f"find {root} -type f ! -path '*/locks/*' -exec sha256sum {{}} + | sort")


def pitr_info(server):
    out = host(server).check_output(
        f"docker exec -u postgres shop-postgres pgbackrest --stanza={STANZA} --output=json info"
    )
    return [b for b in json.loads(out)[0]["backup"] if not b.get("error")]


@pytest.fixture(scope="module")
def live():
    """The target serving v1, with the table the writer fills."""
    deploy("v1")
    psql(
        TARGET,
        "CREATE TABLE IF NOT EXISTS ticks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    # The worker's rows, in its own PostgreSQL, and a dump of them (its timer
    # takes more): point-in-time recovery does not cover that container.
    notes_sql(
        TARGET,
        "CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text); TRUNCATE notes;"
        f"INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, {NOTES_ROWS}) g",
    )
    host(TARGET).check_output("systemctl start onebox-backup@notes.service")
    return host(TARGET)


def test_recover_yml_refuses_a_server_that_serves_traffic(live):
    before = live.check_output("cat /etc/onebox/server-id")
    proc = run_playbook("recover.yml", "-l", "targets", timeout=600)
    out = one_line(proc)
    assert proc.returncode != 0
    assert "serves traffic: shop: its last release v1 runs (shop-" in out, out[-3000:]
    assert "-e recover_over_live=true" in out and "Nothing was changed" in out
    # Not touched: the off-site timers go on, nothing of onebox-dr was left behind.
    assert live.service("onebox-dr-wal.timer").is_running
    assert live.check_output("cat /etc/onebox/server-id") == before
    assert not live.check_output("ls /tmp | grep onebox-recover- || true")


def test_the_server_cannot_delete_or_overwrite_its_copies(live):
    offsite = host(OFFSITE)
    rc, snap = dr(TARGET, "backup")
    assert rc == 0, snap
    restic_before = held(OFFSITE, RESTIC)
    snapshot = offsite.check_output(f"ls {RESTIC}/snapshots | head -n 1")
    pack = offsite.check_output(f"find {RESTIC}/data -type f -printf '%s %f\\n' | sort -n | tail -n 1").split()[1]
    # What restic forget and a tamperer would send, with the target's login.
    assert rest_as_server("DELETE", f"snapshots/{snapshot}") == "403"
    assert rest_as_server("POST", f"snapshots/{snapshot}", b"{}") == "403"
    assert rest_as_server("POST", f"data/{pack}", b"tampered") == "403"
    assert rest_as_server("DELETE", f"data/{pack}") == "403"
    assert held(OFFSITE, RESTIC) == restic_before
    # The WAL mirror through the target's key: no deletion, no overwrite.
    segment = offsite.check_output(f"cd {WAL} && find pgbackrest/archive -type f -name '0000*' | sort | head -n 1")
    wal_before = held(OFFSITE, f"{WAL}/pgbackrest/archive")
    refused = live.run(
        f"mkdir -p /tmp/empty && rsync -e '{SSH}' -r --delete /tmp/empty/ {MIRROR}/{segment.rsplit('/', 1)[0]}/"
    )
    assert refused.rc != 0 and "disabled" in refused.stderr, refused.stderr
    live.check_output(f"echo junk > /tmp/junk && rsync -e '{SSH}' /tmp/junk {MIRROR}/{segment}")
    assert live.run(f"rsync -e '{SSH}' --remove-source-files {MIRROR}/{segment} /tmp/got").rc != 0
    assert held(OFFSITE, f"{WAL}/pgbackrest/archive") == wal_before
    # onebox-dr's probe (site.yml runs it) says so, and the metric.
    rc, probe = dr(TARGET, "probe")
    assert rc == 0 and probe == {"restic": True, "wal": True}, probe
    prom = live.file("/var/lib/prometheus/node-exporter/onebox_offsite.prom").content_string
    assert 'onebox_offsite_append_only{copy="restic"} 1' in prom and 'onebox_offsite_append_only{copy="wal"} 1' in prom


def test_the_prune_run_applies_retention_and_prunes_the_wal_with_its_base_backup(live):
    """offsite-prune.yml on the off-site host, as the owner of the copies:
    restic keeps the 2 newest snapshots; pgBackRest on the target expired
    its first full backup when a second one was taken, the mirror still had
    it (the server cannot delete), the prune run removes it and the WAL only
    it needed. The recovery below restores from what is left."""
    offsite = host(OFFSITE)
    for _attempt in range(2):
        assert dr(TARGET, "backup")[0] == 0
    assert int(offsite.check_output(f"ls {RESTIC}/snapshots | wc -l")) >= 3
    first = pitr_info(TARGET)[0]["label"]
    live.check_output(f"docker exec -u postgres shop-postgres pgbackrest --stanza={STANZA} --type=full backup")
    now = pitr_info(TARGET)
    assert [b["label"] for b in now] != [first] and len(now) == 1
    second = now[0]

    def mirrored():
        newest = offsite.check_output(f"ls {WAL}/info | tail -n 1")
        index = json.loads(offsite.check_output(f"cat {WAL}/info/{newest}/backups.json"))
        return [b["label"] for b in index["backups"]] == [second["label"]]

    deadline = time.monotonic() + 120
    while not mirrored():
        assert time.monotonic() < deadline, "the WAL mirror never got the new info version"
        time.sleep(2)
    backups = f"{WAL}/pgbackrest/backup/{STANZA}"
    assert offsite.file(f"{backups}/{first}/backup.manifest").exists
    proc = run_playbook("offsite-prune.yml", "-l", "targets", "--check", timeout=600)
    assert proc.returncode == 0 and "would remove" in one_line(proc), one_line(proc)[-3000:]
    assert offsite.file(f"{backups}/{first}").exists
    proc = run_playbook("offsite-prune.yml", "-l", "targets", timeout=600)
    out = one_line(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "base backup(s)" in out and second["label"] in out
    for secret in ("molecule-only-restic-password", "molecule-only-rest-password"):
        assert secret not in out
    # The 2 newest, and the prune run's marker (the server's next snapshot
    # reads it: OffsiteRetentionOverdue's metric, checked below).
    assert int(offsite.check_output(f"ls {RESTIC}/snapshots | wc -l")) == 3
    assert not offsite.file(f"{backups}/{first}").exists
    assert offsite.file(f"{backups}/{second['label']}/backup.manifest").exists
    oldest = offsite.check_output(
        f"cd {WAL}/pgbackrest/archive && find . -type f -name '0000*' -printf '%f\\n' | cut -c1-24 | sort | head -n 1"
    )
    assert oldest == second["archive"]["start"], (oldest, second["archive"])


@pytest.fixture(scope="module")
def disaster(live):
    """The whole story, once: returns what the tests check."""
    out = {}
    target = live
    # Uploads as the app writes them (through its container), and Redis keys.
    for i in range(20):
        folder = f"{UPLOADS}/u{i % 4}"
        target.check_output(
            f"docker exec shop-blue sh -c 'mkdir -p {folder} && "
            f"head -c {4096 + i * 997} /dev/urandom > {folder}/f{i}.bin'"
        )
    for i in range(50):
        redis_cli(TARGET, f"SET onebox:key{i} value-{i}-{time.time()}")
    with Writer() as writer:
        time.sleep(15)
        deploy("v2")
        history = [json.loads(x) for x in target.check_output("cat /var/lib/onebox/shop/releases.jsonl").splitlines()]
        out["v2_live_at"] = history[-1]["time"]
        out["audit"] = target.check_output("cat /var/lib/onebox/shop/audit.log")
        # The worker's dumps, all made after v2: its timer (every 20 s here)
        # stopped, the older ones removed, one taken now. Then no copy of
        # notes is as old as "before v2" (as for a worker added later), and
        # the over-live recovery below meets that case every time.
        # A oneshot that runs is "activating", which is-active does not count
        # as active: wait on its state itself, or the rm below meets a dump
        # being written.
        target.check_output(
            "systemctl stop onebox-backup@notes.timer && "
            'while [ "$(systemctl show -P ActiveState onebox-backup@notes.service)" = activating ]; '
            "do sleep 1; done && "
            "rm -f /var/backups/onebox/notes/notes-* && systemctl start onebox-backup@notes.service"
        )
        listing = target.check_output("ls -1 /var/backups/onebox/notes")
        names = listing.split()
        dumps = [n for n in names if re.match(r"notes-\d{8}T\d{6}Z\.", n) and not n.endswith(".sha256")]
        assert dumps and all(f"{d}.sha256" in names for d in dumps), (
            listing + "\n" + target.run("journalctl -u onebox-backup@notes.service -n 30 --no-pager").stdout
        )
        t0 = time.monotonic()
        rc, snap = dr(TARGET, "backup")
        assert rc == 0, snap
        out["snapshot_seconds"] = round(time.monotonic() - t0, 1)
        out["offsite_prom"] = target.file("/var/lib/prometheus/node-exporter/onebox_offsite.prom").content_string
        out["snapshot"] = snap
        out["uploads"] = checksums(TARGET)
        out["redis"] = redis_dump(TARGET)
        out["dumps_on_target"] = sorted(
            n for n in target.check_output("ls /var/backups/onebox/shop").split() if n.endswith(".dump")
        )
        out["server_id"] = target.check_output("cat /etc/onebox/server-id")
        # Writes go on after the snapshot: only the WAL mirror carries them.
        time.sleep(25)
        subprocess.run(["docker", "kill", TARGET], check=True, capture_output=True)
        out["killed_at"] = time.time()
        time.sleep(2)
    out["rows_written"] = writer.rows
    out["last_write"] = max(row[1] for row in writer.rows)

    new_ip = container_ip(NEW)
    seen = {}

    def watch():
        end = time.monotonic() + 1800
        while "at" not in seen and time.monotonic() < end:
            if answered(new_ip, "v2", timeout=1):
                seen["at"] = time.monotonic()
            time.sleep(1)

    started = time.monotonic()
    poller = threading.Thread(target=watch, daemon=True)
    poller.start()
    proc = run_playbook("recover.yml", "-l", "recovery", timeout=1800)
    out["recover_rc"] = proc.returncode
    out["recover_output"] = one_line(proc)
    out["recover_seconds"] = round(time.monotonic() - started, 1)
    poller.join(timeout=60)
    out["rto_seconds"] = round(seen["at"] - started, 1) if "at" in seen else None
    out["new_ip"] = new_ip
    return out


def test_the_server_reads_when_retention_last_ran(disaster):
    """The snapshot after the prune run saw its marker: the metric
    OffsiteRetentionOverdue compares is that run's time, not the oldest
    snapshot's, and the allowed age (8 days by default) is beside it."""
    prom = disaster["offsite_prom"]
    applied = re.search(r"^onebox_offsite_retention_applied_timestamp_seconds (\S+)$", prom, re.M)
    assert applied, prom
    assert 0 < disaster["killed_at"] - float(applied.group(1)) < 3600, prom
    assert "onebox_offsite_retention_max_age_seconds 691200" in prom


def test_recover_yml_rebuilds_the_server(disaster):
    output = disaster["recover_output"]
    assert disaster["recover_rc"] == 0, output[-4000:]
    assert "TASK [Fetch the off-site copies and verify every byte]" in output
    # Its summary: the database to the latest point, the worker's from its
    # dump, the volume, Redis, the release.
    for said in ("Database: latest", "Dumps: notes-", "Volumes: onebox_shop_uploads", "Redis: shop-redis",
                 "Releases: shop v2"):  # fmt: skip
        assert said in output, said
    # The passwords (from Vault) never reach the output.
    for secret in ("molecule-only-restic-password", "molecule-only-pgbackrest-passphrase"):
        assert secret not in output


def test_the_app_answers_its_last_release(disaster):
    assert disaster["rto_seconds"] is not None, "the new server never answered v2"
    new = host(NEW)
    history = [json.loads(x) for x in new.check_output("cat /var/lib/onebox/shop/releases.jsonl").splitlines()]
    versions = [r["version"] for r in history]
    # The lost server's history is back, and the recovery deploy appended to it.
    assert versions[:2] == ["v1", "v2"] and versions[-1] == "v2", versions
    assert new.check_output("cat /etc/onebox/server-id") == disaster["server_id"]


def test_rpo_within_a_minute_with_wal_archiving(disaster):
    newest = float(psql(NEW, "SELECT extract(epoch FROM max(at)) FROM ticks"))
    ids = {int(x) for x in psql(NEW, "SELECT id FROM ticks").split()}
    rpo = disaster["last_write"] - newest
    written = disaster["rows_written"]
    # Every row committed up to the newest one recovered is there.
    assert {i for i, at in written if at <= newest} <= ids
    # The dump-only path: the newest dump in the snapshot against the last write.
    dumps = disaster["dumps_on_target"]
    stamp = dumps[-1].rsplit("-", 1)[-1].split(".")[0]
    dump_time = time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.timezone
    record_json(
        RESULTS,
        "recovery",
        {
            "rpo_seconds": round(rpo, 1),
            "rpo_dump_only_seconds": round(disaster["last_write"] - dump_time, 1),
            "rto_seconds": disaster["rto_seconds"],
            "recover_yml_seconds": disaster["recover_seconds"],
            "snapshot_seconds": disaster["snapshot_seconds"],
            "snapshot_bytes_added": disaster["snapshot"].get("bytes_added"),
            "rows_written": len(written),
            "rows_recovered": len(ids),
        },
    )
    assert rpo <= 60, f"lost {rpo:.1f} s of writes"


def test_a_database_in_an_apps_own_postgresql_came_back_from_its_dump(disaster):
    """notes-postgres, which point-in-time recovery does not cover: its rows
    from the newest dump in the off-site copy, its database its role's, and
    the role logs in with the password this server keeps for it."""
    assert notes_sql(NEW, "SELECT count(*) FROM notes") == str(NOTES_ROWS)
    assert notes_sql(NEW, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'notes'") == "notes"
    login = host(NEW).run(
        'PGPASSWORD="$(cat /etc/onebox/postgres/notes.password)" '
        "docker exec -e PGPASSWORD notes-postgres "
        "psql -h 127.0.0.1 -U notes -d notes -XAtc 'SELECT count(*) FROM notes'"
    )
    assert login.rc == 0 and login.stdout.strip() == str(NOTES_ROWS), login.stderr


def test_uploads_and_redis_came_back(disaster):
    assert checksums(NEW) == disaster["uploads"]
    assert redis_dump(NEW) == disaster["redis"]
    assert len(disaster["redis"]) == 50


def test_the_weekly_drill_restores_to_a_point_in_time(disaster):
    """onebox-dr drill (the weekly timer's run) on the recovered server: the
    newest base backup and its WAL restored to now in a scratch container,
    checked, removed; the live database keeps every row."""
    new = host(NEW)
    rows = psql(NEW, "SELECT count(*) FROM ticks")
    rc, result = dr(NEW, "drill", "--query", "SELECT count(*) FROM pg_database WHERE datname = 'shop'")
    assert rc == 0, result
    assert result["answer"] == "1"
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows
    names = new.check_output("docker ps -a --format '{{.Names}}'; docker volume ls -q").split()
    assert not [n for n in names if n.endswith("-drill")], names
    prom = new.file("/var/lib/prometheus/node-exporter/onebox_offsite.prom").content_string
    assert "onebox_offsite_drill_success 1" in prom


def before_v2(disaster):
    """The rows around v2's migration: (before its marker, between the marker
    and v2's release record, after it)."""
    marker = audit_time(disaster["audit"], "migrate-start", "v2")
    record = time.mktime(time.strptime(disaster["v2_live_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    written = disaster["rows_written"]
    early = {i for i, at in written if at < marker - 1}
    during = {i for i, at in written if marker + 1 < at < record - 1}
    late = {i for i, at in written if at > record + 1}
    # The migration takes seconds (sleep 4): rows went in while it ran.
    assert early and during and late
    return early, during, late


def test_restore_to_just_before_a_release(disaster):
    """onebox-dr restore-db --before-release shop:v2 on the recovered server,
    live: just before v2's migration (not its release record), under the
    app's deploy lock and maintenance page, both given back; the old data kept."""
    new = host(NEW)
    rc, result = dr(NEW, "restore-db", "--before-release", "shop:v2")
    assert rc == 0, result
    assert result["locked"] == ["shop"] and result["maintenance"] == ["shop"], result
    assert "migrate-start of v2" in result["target_text"]
    early, during, late = before_v2(disaster)
    ids = {int(x) for x in psql(NEW, "SELECT id FROM ticks").split()}
    assert early <= ids
    assert not (during | late) & ids
    # v2 still runs on data from before its migration: said, with the way back.
    assert result["releases_at_target"] == {"shop": "v1"}
    assert "shop still runs v2" in " ".join(result["notes"]) and "rollback_to=v1" in " ".join(result["notes"])
    # Traffic back, the lock free; what the database held is kept, not deleted.
    assert answered(disaster["new_ip"], "v2")
    assert not new.file("/var/lib/onebox/shop/deploy.lock").exists
    assert not new.file("/var/lib/onebox/shop/maintenance-colour").exists
    assert new.file(result["kept_copy"]).is_directory
    audit = new.check_output("cat /var/lib/onebox/shop/audit.log")
    assert "maintenance-on via=onebox-dr restore-db" in audit and "maintenance-off via=onebox-dr restore-db" in audit


def test_a_recovery_that_fails_puts_the_data_back(disaster):
    """A moment PostgreSQL cannot reach from the base backup pgBackRest picks
    (just now: the restore above branched off earlier, a timeline the newer
    backup is not on): PostgreSQL stops with its reason, and the data as it
    was comes back."""
    ids = psql(NEW, "SELECT id FROM ticks ORDER BY id")
    just_now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    rc, err = dr(NEW, "restore-db", "--time", just_now)
    assert rc == 1, err
    assert "recovery failed:" in err and "put back as it was" in err, err
    assert psql(NEW, "SELECT id FROM ticks ORDER BY id") == ids


def test_a_target_before_the_oldest_base_backup_is_refused(disaster):
    rows = psql(NEW, "SELECT count(*) FROM ticks")
    rc, err = dr(NEW, "restore-db", "--time", "2000-01-01T00:00:00Z")
    assert rc == 1
    assert "before the oldest base backup" in err and "Nothing was changed" in err
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows


def test_recover_yml_over_a_live_server_takes_a_safety_copy_and_deploys_the_release_of_that_moment(disaster):
    """recover.yml on the recovered server, which serves traffic, told to
    (recover_over_live) and to just before v2: a verified copy of the
    database first (recorded, the command that puts it back printed), the
    maintenance page meanwhile, then v1 deployed (the release live at that
    moment), not v2. The worker's database has no copy that old (every dump
    of it in the snapshot was made after v2): refused, with the shop back
    out of maintenance, until recover_keep_uncovered leaves it as it is."""
    new = host(NEW)
    args = ["recover.yml", "-l", "recovery", "-e", "recover_over_live=true", "-e", "recover_before_release=shop:v2"]
    proc = run_playbook(*args, timeout=1800)
    out = one_line(proc)
    assert proc.returncode != 0, out[-4000:]
    assert "recover.yml stopped before it restored anything" in out and "no verified dump of notes" in out, out[-4000:]
    assert "recover_keep_uncovered=true" in out and "out of maintenance again" in out
    assert answered(disaster["new_ip"], "v2")
    assert not new.file("/var/lib/onebox/shop/maintenance-colour").exists
    assert notes_sql(NEW, "SELECT count(*) FROM notes") == str(NOTES_ROWS)
    notes_sql(NEW, "INSERT INTO notes VALUES (1000, 'written after the recovery')")
    proc = run_playbook(*args, "-e", "recover_keep_uncovered=true", timeout=1800)
    out = one_line(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "Kept as they were (no copy of that moment): notes" in out
    copy = new.check_output("ls /var/backups/onebox/shop | grep '^prerecover-shop-.*\\.dump$' | tail -n 1")
    path = f"/var/backups/onebox/shop/{copy}"
    assert new.run(f"cd /var/backups/onebox/shop && sha256sum -c {copy}.sha256").rc == 0
    assert (
        f"to put it back after this run: ansible-playbook playbooks/restore.yml -l {NEW} -e app=shop "
        f"-e restore_backup={path} -e restore_into_live=true -e restore_confirm=true"
    ) in out
    assert f"recover-safety-copy database=shop path={path}" in new.check_output("cat /var/lib/onebox/shop/audit.log")
    assert "migrate-start of v2" in out and "Releases: shop v1" in out
    # v1 answers, deployed by recover.yml; the data is from before v2's migration.
    assert answered(disaster["new_ip"], "v1")
    history = [json.loads(x) for x in new.check_output("cat /var/lib/onebox/shop/releases.jsonl").splitlines()]
    assert (history[-1]["version"], history[-1]["by"]) == ("v1", "recover.yml")
    early, during, late = before_v2(disaster)
    ids = {int(x) for x in psql(NEW, "SELECT id FROM ticks").split()}
    assert early <= ids and not (during | late) & ids
    assert checksums(NEW) == disaster["uploads"]
    # The worker's database: a safety copy first, and left as it was.
    assert new.run("ls /var/backups/onebox/notes | grep -q '^prerecover-notes-.*\\.dump$'").rc == 0
    assert notes_sql(NEW, "SELECT count(*) FROM notes") == str(NOTES_ROWS + 1)
    assert not new.file("/var/lib/onebox/shop/maintenance-colour").exists
    for secret in (
        "molecule-only-restic-password",
        "molecule-only-pgbackrest-passphrase",
        "molecule-only-rest-password",
    ):
        assert secret not in out


def bad_config(new, **change):
    """A copy of the settings with CHANGE, as a mistaken inventory would give."""
    cfg = json.loads(new.check_output("cat /etc/onebox/offsite.json"))
    cfg.update(change)
    subprocess.run(
        ["docker", "exec", "-i", NEW, "sh", "-c", "umask 077; cat > /tmp/bad-offsite.json"],
        input=json.dumps(cfg),
        text=True,
        check=True,
    )
    return "/tmp/bad-offsite.json"


def test_a_wrong_password_and_an_unreachable_host_are_clear_errors(disaster):
    new = host(NEW)
    new.check_output("printf 'not-the-password' > /tmp/wrong-password && chmod 600 /tmp/wrong-password")
    rc, err = dr(NEW, "check", config=bad_config(new, password_file="/tmp/wrong-password"))
    assert rc == 1 and "wrong password" in err, err
    rc, err = dr(NEW, "backup", config=bad_config(new, repository="rest:https://onebox-backup-offsite:8001/box/"))
    assert rc == 1 and "cannot reach" in err, err
    # The timer's metric says so (OffsiteBackupFailing fires on it).
    prom = new.file("/var/lib/prometheus/node-exporter/onebox_offsite.prom").content_string
    assert "onebox_offsite_backup_success 0" in prom


def test_a_tampered_offsite_copy_is_caught_before_restore(disaster):
    new, offsite = host(NEW), host(OFFSITE)
    new.check_output("systemctl stop onebox-dr-wal.timer onebox-dr-backup.timer")
    rows = psql(NEW, "SELECT count(*) FROM ticks")
    uploads = checksums(NEW)
    # A WAL segment cut short in the mirror: pgbackrest verify refuses it.
    segment = offsite.check_output(f"find {WAL}/pgbackrest/archive -type f -name '0000*' -size +1k | sort | tail -n 1")
    assert segment
    offsite.check_output(f"truncate -s 512 {segment}")
    rc, manifest = dr(NEW, "fetch", "/var/lib/onebox-dr/recheck")
    assert rc == 0, manifest
    rc, err = dr(NEW, "restore-db", "--repo", "/var/lib/onebox-dr/recheck/pgbackrest")
    assert rc == 1 and "pgbackrest verify" in err, err
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows
    # A restic pack cut short: restic check fails before anything is restored.
    pack = offsite.check_output(f"find {RESTIC}/data -type f -printf '%s %p\\n' | sort -n | tail -n 1").split()[1]
    offsite.check_output(f"truncate -s 100 {pack}")
    rc, err = dr(NEW, "fetch", "/var/lib/onebox-dr/recheck2")
    assert rc == 1, err
    assert not new.file("/var/lib/onebox-dr/recheck2").exists
    assert checksums(NEW) == uploads
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows
