"""roles/backup/files/onebox-pg-backup: the timer's program, on a real cluster."""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.onebox.platform.plugins.module_utils import pg_backup as engine
from conftest import ROOT, run_program

PROGRAM = os.path.join(ROOT, "roles", "backup", "files", "onebox_pg_backup.py")


def run(action, cfg_path):
    return run_program(PROGRAM, action, "--config", str(cfg_path))


def metrics(directory):
    text = (directory / "onebox_backup_nightly.prom").read_text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^(\w+)\{backup="nightly"\} (\S+)$', text, re.M)}


def config(tmp_path, cluster, appdb, **extra):
    cfg = dict(
        job="nightly",
        dbname=appdb,
        backup_dir=str(tmp_path / "b"),
        metrics_dir=str(tmp_path / "m"),
        state_dir=str(tmp_path / "s"),
        keep_last=2,
        **cluster.conn_args(),
        **extra,
    )
    (tmp_path / "b").mkdir(exist_ok=True)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(cfg))
    return path


def test_backups_retention_and_metrics(tmp_path, cluster, appdb):
    cfg = config(tmp_path, cluster, appdb)
    for _i in range(3):
        rc, out = run("backup", cfg)
        assert rc == 0, out
        time.sleep(1.1)
    dumps = sorted(p for p in os.listdir(tmp_path / "b") if p.endswith(".dump"))
    assert len(dumps) == 2
    m = metrics(tmp_path / "m")
    assert abs(m["onebox_backup_last_success_timestamp_seconds"] - time.time()) < 60
    assert m["onebox_backup_last_run_success"] == 1 and m["onebox_backup_failures_total"] == 0
    assert m["onebox_backup_kept"] == 2 and m["onebox_backup_last_size_bytes"] > 0


def test_failure_counts_and_keeps_the_last_success(tmp_path, cluster, appdb):
    cfg = config(tmp_path, cluster, appdb)
    assert run("backup", cfg)[0] == 0
    good = metrics(tmp_path / "m")["onebox_backup_last_success_timestamp_seconds"]
    bad = json.loads(cfg.read_text())
    bad["password"] = "wrong"
    cfg.write_text(json.dumps(bad))
    rc, out = run("backup", cfg)
    assert rc == 1 and "password authentication failed" in out
    m = metrics(tmp_path / "m")
    assert m["onebox_backup_failures_total"] == 1 and m["onebox_backup_last_run_success"] == 0
    assert m["onebox_backup_last_success_timestamp_seconds"] == good


def test_restore_drill_passes_then_catches_a_corrupted_backup(tmp_path, cluster, appdb):
    cfg = config(tmp_path, cluster, appdb)
    assert run("backup", cfg)[0] == 0
    rc, out = run("drill", cfg)
    assert rc == 0, out
    assert "restored 2 tables" in out
    assert metrics(tmp_path / "m")["onebox_backup_restore_drill_success"] == 1
    assert cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{appdb}_restore_drill'") == "0"
    newest = sorted(p for p in os.listdir(tmp_path / "b") if p.endswith(".dump"))[-1]
    with open(tmp_path / "b" / newest, "r+b") as fh:
        fh.seek(50)
        fh.write(b"\0\0\0\0")
    rc, out = run("drill", cfg)
    assert rc == 1 and "checksum mismatch" in out
    assert metrics(tmp_path / "m")["onebox_backup_restore_drill_success"] == 0
    assert cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{appdb}_restore_drill'") == "0"


def test_the_drills_scratch_copy_is_closed_to_other_apps(tmp_path, cluster, appdb):
    """The scratch database holds the app's data while the drill runs: no
    role but the superuser's may connect to it (CONNECT not PUBLIC's)."""
    cfg = config(tmp_path, cluster, appdb)
    job = json.loads(cfg.read_text())
    job["drill_query"] = "SELECT NOT has_database_privilege('public', current_database(), 'CONNECT')"
    cfg.write_text(json.dumps(job))
    assert run("backup", cfg)[0] == 0
    rc, out = run("drill", cfg)
    assert rc == 0 and "check query: t" in out, out


def test_a_backup_dated_in_the_future_is_reported_kept_and_never_drilled(tmp_path, cluster, appdb):
    cfg = config(tmp_path, cluster, appdb)
    ahead = f"{appdb}-20990101T000000Z.dump"
    (tmp_path / "b" / ahead).write_bytes(b"copied in")
    digest = engine.sha256_file(str(tmp_path / "b" / ahead))
    (tmp_path / "b" / f"{ahead}.sha256").write_text(f"{digest}  {ahead}\n")
    for _i in range(3):
        rc, out = run("backup", cfg)
        assert rc == 0, out
        assert f"WARNING: backups of {appdb} in {tmp_path / 'b'}: 1 backup(s) dated" in out
        assert f"{ahead} (2099-01-01T00:00:00Z)" in out
        time.sleep(1.1)
    dumps = sorted(p for p in os.listdir(tmp_path / "b") if p.endswith(".dump"))
    assert len(dumps) == 3 and ahead in dumps  # keep_last 2 of the real ones, and the one from the future
    m = metrics(tmp_path / "m")
    assert m["onebox_backup_future_dated"] == 1 and m["onebox_backup_kept"] == 3
    rc, out = run("drill", cfg)
    assert rc == 0, out
    assert "WARNING: 1 backup(s) dated" in out and f"restore drill of {tmp_path / 'b' / dumps[-2]}" in out


def test_drill_query_that_finds_nothing_fails_the_drill(tmp_path, cluster, appdb):
    cfg = config(tmp_path, cluster, appdb, drill_query="SELECT count(*) FROM items WHERE id < 0")
    assert run("backup", cfg)[0] == 0
    rc, out = run("drill", cfg)
    assert rc == 1 and "check query returned '0'" in out
    assert metrics(tmp_path / "m")["onebox_backup_restore_drill_success"] == 0


def test_bad_config(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job": "x"}))
    rc, out = run("backup", path)
    assert rc == 2 and "lacks 'dbname'" in out


def names(directory):
    return sorted(p for p in os.listdir(directory) if not p.startswith("."))


def test_offsite_copy_mirrors_retention_and_deletes_nothing_else(tmp_path, cluster, appdb):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "notes.txt").write_text("not ours")
    cfg = config(tmp_path, cluster, appdb, offsite_target=str(remote), max_age=900)
    first = None
    for _i in range(3):
        rc, out = run("backup", cfg)
        assert rc == 0, out
        first = first or names(tmp_path / "b")[0]
        time.sleep(1.1)
    local = names(tmp_path / "b")
    assert len(local) == 4 and first not in local  # 2 backups + 2 .sha256, the first pruned
    assert names(remote) == sorted([*local, "notes.txt"])
    for name in local:
        assert (remote / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    m = metrics(tmp_path / "m")
    assert m["onebox_backup_offsite_last_run_success"] == 1 and m["onebox_backup_max_age_seconds"] == 900
    # A backup lost here (not pruned by retention) stays there.
    lost = local[0]
    os.remove(tmp_path / "b" / lost)
    os.remove(tmp_path / "b" / f"{lost}.sha256")
    assert run("backup", cfg)[0] == 0
    assert lost in names(remote) and f"{lost}.sha256" in names(remote)


def test_offsite_prune_off_keeps_everything_there(tmp_path, cluster, appdb):
    remote = tmp_path / "remote"
    remote.mkdir()
    cfg = config(tmp_path, cluster, appdb, offsite_target=str(remote), offsite_prune=False)
    for _i in range(3):
        assert run("backup", cfg)[0] == 0
        time.sleep(1.1)
    assert len(names(tmp_path / "b")) == 4 and len(names(remote)) == 6


def test_failed_offsite_copy_keeps_the_local_backup(tmp_path, cluster, appdb):
    cfg = config(
        tmp_path, cluster, appdb, offsite_target="backups@127.0.0.1:/srv/backups", offsite_port=1, offsite_timeout=10
    )
    rc, out = run("backup", cfg)
    assert rc == 3 and "off-site copy to backups@127.0.0.1:/srv/backups FAILED" in out, out
    assert "Connection refused" in out
    m = metrics(tmp_path / "m")
    assert m["onebox_backup_offsite_last_run_success"] == 0 and m["onebox_backup_last_run_success"] == 1
    assert len(names(tmp_path / "b")) == 2


def test_timer_job_in_an_official_shaped_container_connects_as_postgres(tmp_path, pg_container, containerdb):
    """The job file the backup role writes for a container names no user when
    none is set; `docker exec` runs as root there, so the program must send
    the default role (postgres), for the backup and for the drill."""
    (tmp_path / "b").mkdir()
    cfg = tmp_path / "job.json"
    cfg.write_text(
        json.dumps(
            dict(
                job="nightly",
                dbname=containerdb,
                container=pg_container.name,
                backup_dir=str(tmp_path / "b"),
                metrics_dir=str(tmp_path / "m"),
                state_dir=str(tmp_path / "s"),
            )
        )
    )
    rc, out = run("backup", cfg)
    assert rc == 0, out
    rc, out = run("drill", cfg)
    assert rc == 0, out
    assert metrics(tmp_path / "m")["onebox_backup_restore_drill_success"] == 1


def test_job_file_keys_are_the_module_options_or_the_programs_own():
    """One mapping: every key the role's job.json template writes is either a
    pg_backup option (engine.BACKUP_ARGS, same defaults as the module) or one
    the program alone reads."""
    template = os.path.join(ROOT, "roles", "backup", "templates", "job.json.j2")
    with open(template) as fh:
        keys = set(re.findall(r'^\s*"(\w+)":', fh.read(), re.M))
    own = {"job", "metrics_dir", "state_dir", "drill_query", "max_age"} | {k for k in keys if k.startswith("offsite_")}
    assert keys - own <= set(engine.BACKUP_ARGS), keys - own - set(engine.BACKUP_ARGS)
    assert engine.params_with_defaults({"backup_dir": "/x", "dbname": "d"})["lock_timeout"] == 600
    assert engine.params_with_defaults({"backup_dir": "/x", "dbname": "d"})["user"] == "postgres"
