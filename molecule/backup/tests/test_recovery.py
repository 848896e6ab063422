"""Lose the server, lose nothing (SPEC R56).

The target runs the whole stack (site.yml): the shop app with an upload
volume, PostgreSQL with pgBackRest WAL archiving, Redis, restic snapshots and
the WAL mirror to the off-site host. While a row goes into PostgreSQL every
second, the target is killed without warning (docker kill); recover.yml then
rebuilds everything onto a new server. Measured: RPO (the last row written
on the target against the newest row on the new server), RTO (from the start
of recover.yml to the app answering its last release), and what else came
back (upload checksums, Redis keys, release history). Then a point-in-time
restore to just before a release, and the bad inputs: a target before the
oldest base backup, a wrong restic password, an unreachable host, tampered
off-site copies. This file runs after test_backup.py (file order): it kills
the target.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request

import pytest
from onebox_molecule import PROJECT, container_ip, host, one_line, record_json, run_playbook

TARGET = "onebox-backup-target"
NEW = "onebox-backup-recovery"
RESULTS = os.path.join(PROJECT, "tests", "output", "recovery.json")
UPLOADS = "/www/uploads"


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
    proc = run_playbook("deploy.yml", "-l", limit, "-e", f"app_version={version}", timeout=600)
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


def redis_dump(server):
    keys = host(server).check_output("docker exec shop-redis redis-cli --raw KEYS 'onebox:*'").split()
    return {k: host(server).check_output(f"docker exec shop-redis redis-cli --raw GET {k}") for k in sorted(keys)}


@pytest.fixture(scope="module")
def disaster():
    """The whole story, once: returns what the tests check."""
    out = {}
    target = host(TARGET)
    deploy("v1")
    psql(
        TARGET,
        "CREATE TABLE IF NOT EXISTS ticks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    # Uploads as the app writes them (through its container), and Redis keys.
    for i in range(20):
        folder = f"{UPLOADS}/u{i % 4}"
        target.check_output(
            f"docker exec shop-blue sh -c 'mkdir -p {folder} && "
            f"head -c {4096 + i * 997} /dev/urandom > {folder}/f{i}.bin'"
        )
    for i in range(50):
        target.check_output(f"docker exec shop-redis redis-cli SET onebox:key{i} value-{i}-{time.time()}")
    with Writer() as writer:
        time.sleep(15)
        deploy("v2")
        history = [json.loads(x) for x in target.check_output("cat /var/lib/onebox/shop/releases.jsonl").splitlines()]
        out["v2_live_at"] = history[-1]["time"]
        t0 = time.monotonic()
        rc, snap = dr(TARGET, "backup")
        assert rc == 0, snap
        out["snapshot_seconds"] = round(time.monotonic() - t0, 1)
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
    return out


def test_recover_yml_rebuilds_the_server(disaster):
    output = disaster["recover_output"]
    assert disaster["recover_rc"] == 0, output[-4000:]
    assert "TASK [Fetch the off-site copies and verify every byte]" in output
    # Its summary: the database to the latest point, the volume, Redis, the release.
    for said in ("Database: latest", "Volumes: onebox_shop_uploads", "Redis: shop-redis", "Releases: shop v2"):
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


def test_restore_to_just_before_a_release(disaster):
    new = host(NEW)
    rows_before = int(psql(NEW, "SELECT count(*) FROM ticks"))
    rc, result = dr(NEW, "restore-db", "--before-release", "shop:v2")
    assert rc == 0, result
    v2 = time.mktime(time.strptime(disaster["v2_live_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    target = v2 - 1
    ids = {int(x) for x in psql(NEW, "SELECT id FROM ticks").split()}
    written = disaster["rows_written"]
    assert {i for i, at in written if at < target - 1} <= ids
    assert not {i for i, at in written if at > target + 1} & ids
    assert len(ids) < rows_before
    # What the database held before is kept, not deleted.
    assert new.file(result["kept_copy"]).is_directory


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
    rc, err = dr(NEW, "backup", config=bad_config(new, ssh_port=2222))
    assert rc == 1 and "cannot reach" in err, err
    # The timer's metric says so (OffsiteBackupFailing fires on it).
    prom = new.file("/var/lib/prometheus/node-exporter/onebox_offsite.prom").content_string
    assert "onebox_offsite_backup_success 0" in prom


def test_a_tampered_offsite_copy_is_caught_before_restore(disaster):
    new, offsite = host(NEW), host("onebox-backup-offsite")
    new.check_output("systemctl stop onebox-dr-wal.timer onebox-dr-backup.timer")
    rows = psql(NEW, "SELECT count(*) FROM ticks")
    uploads = checksums(NEW)
    # A WAL segment cut short in the mirror: pgbackrest verify refuses it.
    segment = offsite.check_output(
        "find /srv/backups/box/wal/pgbackrest/archive -type f -name '0000*' -size +1k | sort | tail -n 1"
    )
    assert segment
    offsite.check_output(f"truncate -s 512 {segment}")
    rc, manifest = dr(NEW, "fetch", "/var/lib/onebox-dr/recheck")
    assert rc == 0, manifest
    rc, err = dr(NEW, "restore-db", "--repo", "/var/lib/onebox-dr/recheck/pgbackrest")
    assert rc == 1 and "pgbackrest verify" in err, err
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows
    # A restic pack cut short: restic check fails before anything is restored.
    pack = offsite.check_output(
        "find /srv/backups/box/restic/data -type f -printf '%s %p\\n' | sort -n | tail -n 1"
    ).split()[1]
    offsite.check_output(f"truncate -s 100 {pack}")
    rc, err = dr(NEW, "fetch", "/var/lib/onebox-dr/recheck2")
    assert rc == 1, err
    assert not new.file("/var/lib/onebox-dr/recheck2").exists
    assert checksums(NEW) == uploads
    assert psql(NEW, "SELECT count(*) FROM ticks") == rows
