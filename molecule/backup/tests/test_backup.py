"""Scheduled backups on a real server (SPEC R27, R34). Tests run in file order."""

from __future__ import annotations

import re
import time

from onebox_molecule import one_line, run_playbook

DIR = "/var/backups/onebox/shop"
PROM = "/var/lib/prometheus/node-exporter/onebox_backup_shop.prom"


OFFSITE_DIR = "/srv/backups/shop"


def listing(host, directory):
    return sorted(host.check_output(f"ls -A {directory}").split())


def play(name, *extra):
    proc = run_playbook(name, "-l", "targets", *extra, timeout=600)
    return proc.returncode, one_line(proc)


def psql(target, sql, db="shop"):
    return target.check_output(
        f'docker exec -i shop-postgres psql -U postgres -X -A -t -v ON_ERROR_STOP=1 -d {db} -c "{sql}"'
    )


def metrics(target):
    text = target.file(PROM).content_string
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^(\w+)\{backup="shop"\} (\S+)$', text, re.M)}


def notes_dumps(target):
    """The worker notes' dumps (its database in notes-postgres)."""
    return sorted(n for n in target.check_output("ls /var/backups/onebox/notes").split() if n.endswith(".dump"))


def dumps(target):
    return sorted(n for n in target.check_output(f"ls {DIR}").split() if n.endswith(".dump"))


def pause_timer(target):
    """Stop the backup timer and wait for a run it already started: starting
    the timer again (Persistent=true) may have fired a missed run, which
    would otherwise land in the middle of the next test."""
    target.check_output("systemctl stop onebox-backup@shop.timer")
    deadline = time.monotonic() + 120
    while target.run("systemctl is-active --quiet onebox-backup@shop.service").rc == 0 or (
        target.check_output("systemctl show -p ActiveState --value onebox-backup@shop.service") == "activating"
    ):
        assert time.monotonic() < deadline, "a backup run did not end in 120 s"
        time.sleep(1)


def test_timers_are_scheduled(target):
    assert target.service("onebox-backup@shop.timer").is_running
    assert target.service("onebox-backup@shop.timer").is_enabled
    assert target.service("onebox-restore-drill@shop.timer").is_enabled
    assert "onebox-backup@shop.timer" in target.check_output("systemctl list-timers --all")


def test_the_timer_fires_by_itself(target):
    """The schedule in this scenario is every 20 s: no manual start."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not dumps(target):
        time.sleep(2)
    assert dumps(target), "the timer never produced a backup"
    journal = target.check_output("journalctl -u onebox-backup@shop.service --no-pager")
    assert "backup of shop:" in journal
    check = target.run(f"cd {DIR} && sha256sum -c {dumps(target)[-1]}.sha256")
    assert check.rc == 0, check.stdout + check.stderr


def test_metrics_for_node_exporter(target):
    m = metrics(target)
    assert m["onebox_backup_last_run_success"] == 1
    assert m["onebox_backup_failures_total"] == 0
    assert m["onebox_backup_last_size_bytes"] > 0
    now = float(target.check_output("date +%s"))
    assert now - m["onebox_backup_last_success_timestamp_seconds"] < 300


def test_the_offsite_copy_arrives_intact(target, offsite):
    pause_timer(target)
    try:
        # A run exits 3 when its off-site copy fails.
        target.check_output("systemctl start onebox-backup@shop.service")
        newest = dumps(target)[-1]
        assert newest in listing(offsite, OFFSITE_DIR)
        check = offsite.run(f"cd {OFFSITE_DIR} && sha256sum -c {newest}.sha256")
        assert check.rc == 0, check.stdout + check.stderr
        assert offsite.check_output(f"stat -c '%U %a' {OFFSITE_DIR}/{newest}") == "backups 600"
        assert metrics(target)["onebox_backup_offsite_last_run_success"] == 1
    finally:
        target.check_output("systemctl start onebox-backup@shop.timer")


def test_retention_prunes_as_specified_here_and_offsite(target, offsite):
    """keep_last 2, keep_daily 3: with one backup a day for the 5 days before
    today (here and, as if copied earlier, off-site), a new backup keeps
    itself, yesterday's and the day before's, in both places. Off-site, a
    backup this server never had and a foreign file stay."""
    pause_timer(target)
    try:
        target.check_output(f"find {DIR} -maxdepth 1 -name 'shop-*' -delete")
        target.check_output(f"touch {DIR}/notes.txt")
        offsite.check_output(f"find {OFFSITE_DIR} -mindepth 1 -delete")
        stranger = offsite.check_output("date -u -d '-10 day' +shop-%Y%m%dT120000Z.dump").strip()
        offsite.check_output(f"cd {OFFSITE_DIR} && echo x > {stranger} && echo x > {stranger}.sha256 && touch keep.txt")
        fakes = []
        for days in range(1, 6):
            name = target.check_output(f"date -u -d '-{days} day' +shop-%Y%m%dT120000Z.dump").strip()
            target.check_output(f"cd {DIR} && echo old > {name} && sha256sum {name} > {name}.sha256")
            offsite.check_output(f"cd {OFFSITE_DIR} && echo old > {name} && sha256sum {name} > {name}.sha256")
            fakes.append(name)
        # Fails (exit 3) if the off-site copy fails.
        target.check_output("systemctl start onebox-backup@shop.service")
        left = dumps(target)
        assert len(left) == 3, left
        assert fakes[0] in left and fakes[1] in left
        for pruned in fakes[2:]:
            assert pruned not in left
            assert target.run(f"test -e {DIR}/{pruned}.sha256").rc != 0
        assert target.file(f"{DIR}/notes.txt").exists
        # (The worker's dumps go to the same place, under their own names.)
        there = [n for n in listing(offsite, OFFSITE_DIR) if not n.startswith("notes-")]
        expected = [*left, *(f"{n}.sha256" for n in left), stranger, f"{stranger}.sha256", "keep.txt"]
        assert there == sorted(expected)
    finally:
        target.check_output("systemctl start onebox-backup@shop.timer")


def test_restore_drill_passes(target):
    target.check_output("systemctl start onebox-restore-drill@shop.service")
    assert metrics(target)["onebox_backup_restore_drill_success"] == 1
    assert "restore drill of" in target.check_output("journalctl -u onebox-restore-drill@shop.service --no-pager")
    assert psql(target, "SELECT count(*) FROM pg_database WHERE datname = 'shop_restore_drill'", "postgres") == "0"


def test_restore_round_trips_row_counts(target):
    pause_timer(target)
    psql(
        target,
        "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, total numeric); TRUNCATE orders;"
        "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 1234) g",
    )
    notes_before = notes_dumps(target)
    rc, out = play("backup.yml")
    assert rc == 0, out[-2000:]
    # Without -e app: every app's database, the worker's in its own PostgreSQL too.
    notes_after = notes_dumps(target)
    assert notes_after and notes_after != notes_before, (notes_before, notes_after)
    psql(target, "DELETE FROM orders WHERE id > 34")
    # Default: the newest backup into a scratch database.
    rc, out = play("restore.yml", "-e", "app=shop")
    assert rc == 0, out[-2000:]
    assert psql(target, "SELECT count(*) FROM orders", "shop_restore") == "1234"
    assert psql(target, "SELECT count(*) FROM orders") == "34"
    # Into the live database: refused without the confirmation...
    rc, out = play("restore.yml", "-e", "app=shop", "-e", "restore_into_live=true")
    assert rc != 0 and "shop is the live database of shop" in out and "restore_confirm=true" in out
    # ...also when the live database is named as the target.
    rc, out = play("restore.yml", "-e", "app=shop", "-e", "restore_target=shop")
    assert rc != 0 and "shop is the live database of shop" in out, out[-2000:]
    assert psql(target, "SELECT count(*) FROM orders") == "34"
    # ...done with it.
    rc, out = play("restore.yml", "-e", "app=shop", "-e", "restore_into_live=true", "-e", "restore_confirm=true")
    assert rc == 0, out[-2000:]
    assert psql(target, "SELECT count(*) FROM orders") == "1234"


def test_a_corrupted_backup_is_caught_and_never_restored(target):
    newest = dumps(target)[-1]
    target.check_output(f"printf 'XXXX' | dd of={DIR}/{newest} bs=1 seek=100 conv=notrunc status=none")
    psql(target, "DELETE FROM orders WHERE id > 10")
    rc, out = play("restore.yml", "-e", "app=shop", "-e", "restore_into_live=true", "-e", "restore_confirm=true")
    assert rc != 0 and "checksum mismatch" in out and "not restored" in out
    assert psql(target, "SELECT count(*) FROM orders") == "10"
    drill = target.run("systemctl start onebox-restore-drill@shop.service")
    assert drill.rc != 0
    assert metrics(target)["onebox_backup_restore_drill_success"] == 0
    target.check_output("systemctl start onebox-backup@shop.timer")
