"""Disaster recovery speeds on one ~200 MB database, in one run, against the
dump-only path (the backup role's verified custom dump and pg_restore):

- pgBackRest full backup (zstd, encrypted) and restore of the data directory;
- a WAL burst archived by archive_command (pgbackrest archive-push);
- restic (encrypted, deduplicated) snapshot of the dump, a second snapshot
  with nothing changed, and the restore of the dump from it.

    .venv/bin/python bench/dr_bench.py [--rows N]

Needs root, Debian's postgresql, pgbackrest and restic (scripts/test.sh
setup installs them). Everything is local (repositories in a temp dir).
Prints a Markdown table with ratios to the dump baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from conftest import run_module  # noqa: E402
from pg_backup_bench import du, timed  # noqa: E402  (same database, same measures)
from pg_fixtures import ArchivingCluster  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=940000, help="rows of ~130 bytes (940k: ~200 MB with its index)")
    args = ap.parse_args()
    cluster = ArchivingCluster(stanza="b", archive_timeout=5)
    binary, top, repo = cluster.bin, cluster.top, cluster.repo

    def psql(sql, db="bench"):
        return cluster.psql(sql, db=db)

    def backrest(*a):
        return cluster.backrest(*a)

    rows = []
    try:
        psql("CREATE DATABASE bench", db="postgres")
        psql(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz, kind text, payload text);"
            "INSERT INTO events (at, kind, payload) SELECT now() - g * interval '1 second', "
            "(ARRAY['view','click','buy'])[1 + g % 3], md5(g::text) || md5((g*3)::text) || repeat('x', 40) "
            f"FROM generate_series(1, {args.rows}) g; CREATE INDEX ON events (at); ANALYZE events;"
        )
        size = int(psql("SELECT pg_database_size('bench')"))
        conn = dict(host=top, port=cluster.port, user="postgres", bin_dir=binary)

        # Baseline: the backup role's dump (custom, gzip, verified) and its restore.
        dumps = f"{top}/dumps"
        os.mkdir(dumps)
        (rc, res), dump_t = timed(lambda: run_module("pg_backup", dict(conn, backup_dir=dumps, dbname="bench")))
        assert rc == 0, res.get("msg")
        (rc, res2), dump_rt = timed(
            lambda: run_module("pg_restore", dict(conn, path=res["path"], target_db="restored", create=True))
        )
        assert rc == 0, res2.get("msg")
        assert int(psql("SELECT count(*) FROM events", db="restored")) == args.rows
        psql("DROP DATABASE restored", db="postgres")
        rows.append(("dump: pg_backup custom + pg_restore (baseline)", dump_t, res["bytes"], dump_rt))

        # pgBackRest: full backup of the cluster, restore of the data directory.
        _out, full_t = timed(lambda: backrest("--type=full", "backup"))
        full_bytes = du(f"{repo}/backup")
        restored = f"{top}/restored"
        os.mkdir(restored)
        shutil.chown(restored, "postgres", "postgres")
        _out, restore_t = timed(lambda: backrest(f"--pg1-path={restored}", "restore"))
        assert os.path.exists(f"{restored}/PG_VERSION")
        rows.append(("pgBackRest full (zstd, aes-256) + restore", full_t, full_bytes, restore_t))

        # A WAL burst: ~100 MB of changes, timed until every segment is archived.
        def burst():
            before = int(psql("SELECT archived_count FROM pg_stat_archiver"))
            psql("UPDATE events SET kind = kind || '!' WHERE id % 2 = 0")
            psql("SELECT pg_switch_wal()")
            lsn = psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                last = psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                if last and last[:24] >= lsn[:24] and int(psql("SELECT archived_count FROM pg_stat_archiver")) > before:
                    return int(psql("SELECT archived_count FROM pg_stat_archiver")) - before
                time.sleep(0.2)
            raise SystemExit("WAL was not archived within 600 s")

        archived_before = du(f"{repo}/archive")
        segments, wal_t = timed(burst)
        rows.append(
            (
                f"WAL burst: {segments} segments ({segments * 16} MB) archived",
                wal_t,
                du(f"{repo}/archive") - archived_before,
                None,
            )
        )

        # restic: the dump into an encrypted repository, again unchanged, and back.
        env = dict(os.environ, RESTIC_REPOSITORY=f"{top}/restic", RESTIC_PASSWORD="bench-only-password-1")
        subprocess.run(["restic", "init"], env=env, capture_output=True, check=True)
        first, snap_t = timed(
            lambda: subprocess.run(
                ["restic", "backup", "--json", dumps], env=env, capture_output=True, text=True, check=True
            )
        )
        second, snap2_t = timed(
            lambda: subprocess.run(
                ["restic", "backup", "--json", dumps], env=env, capture_output=True, text=True, check=True
            )
        )
        added = [json.loads(x).get("data_added", 0) for x in (first.stdout, second.stdout) for x in x.splitlines()]
        _out, snap_rt = timed(
            lambda: subprocess.run(
                ["restic", "restore", "latest", "--target", f"{top}/restic-restore"],
                env=env,
                capture_output=True,
                check=True,
            )
        )
        rows.append(("restic snapshot of the dump + restore", snap_t, du(f"{top}/restic"), snap_rt))
        rows.append(("restic snapshot, nothing changed", snap2_t, max(added[-1:] or [0]), None))

        print(
            f"Database: {size / 1e6:.0f} MB ({args.rows} rows + index), PostgreSQL "
            f"{psql('SHOW server_version')}, {os.cpu_count()} cores.\n"
        )
        print("| method | backup s | stored MB | restore s | backup time vs baseline | restore time vs baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, t, stored, rt in rows:
            rts = f"{rt:.1f}" if rt is not None else "-"
            ratio_rt = f"{rt / dump_rt:.2f}" if rt is not None else "-"
            print(f"| {label} | {t:.1f} | {stored / 1e6:.1f} | {rts} | {t / dump_t:.2f} | {ratio_rt} |")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
