"""Backup and restore of a ~200 MB database in each format, against the
usual `pg_dump | gzip` script, in one run on the same throwaway cluster.
zstd and lz4 run as commands beside pg_dump (plain format), so they work
with any pg_dump; custom/directory with zstd would need pg_dump 16.

    .venv/bin/python bench/pg_backup_bench.py [--rows N]

Prints a Markdown table (time, size, restore time, ratios to the baseline).
Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from conftest import run_module  # noqa: E402
from pg_fixtures import Cluster  # noqa: E402


def du(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--rows", type=int, default=940000, help="rows of ~130 bytes (940k: ~200 MB on disk with its index)"
    )
    args = ap.parse_args()
    cluster = Cluster()
    try:
        db = "bench"
        cluster.psql(f"CREATE DATABASE {db}")
        cluster.psql(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz, kind text, payload text);"
            f"INSERT INTO events (at, kind, payload) SELECT now() - g * interval '1 second', "
            f"(ARRAY['view','click','buy'])[1 + g % 3], md5(g::text) || md5((g*3)::text) || repeat('x', 40) "
            f"FROM generate_series(1, {args.rows}) g; CREATE INDEX ON events (at); ANALYZE events;",
            db,
        )
        size = int(cluster.psql(f"SELECT pg_database_size('{db}')"))
        rows = []
        work = tempfile.mkdtemp(prefix="onebox-bench-")
        env = cluster.env()

        # Baseline: what most cron scripts do.
        base_file = os.path.join(work, "baseline.sql.gz")

        def baseline():
            subprocess.run(
                ["bash", "-o", "pipefail", "-c", f"{cluster.bin}/pg_dump -d {db} | gzip > {base_file}"],
                env=env,
                check=True,
            )

        base_t = timed(baseline)[1]
        cluster.psql("CREATE DATABASE restore_base")

        def base_restore():
            subprocess.run(
                ["bash", "-o", "pipefail", "-c", f"gunzip -c {base_file} | {cluster.bin}/psql -q -d restore_base"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )

        base_rt = timed(base_restore)[1]
        rows.append(("pg_dump \\| gzip (baseline)", base_t, du(base_file), base_rt))

        for label, kw in (
            ("pg_backup custom (gzip 6)", dict(format="custom")),
            ("pg_backup custom (gzip 1)", dict(format="custom", compression_level=1)),
            ("pg_backup directory, 2 jobs", dict(format="directory", jobs=2)),
            ("pg_backup plain + gzip", dict(format="plain")),
            ("pg_backup plain + zstd (level 3)", dict(format="plain", compression="zstd")),
            ("pg_backup plain + zstd (level 1)", dict(format="plain", compression="zstd", compression_level=1)),
            ("pg_backup plain + lz4", dict(format="plain", compression="lz4")),
        ):
            d = os.path.join(work, label.split()[1] + str(len(rows)))
            os.makedirs(d)
            (rc, res), t = timed(
                lambda d=d, kw=kw: run_module("pg_backup", cluster.conn_args(backup_dir=d, dbname=db, **kw))
            )
            assert rc == 0, res.get("msg")
            target = f"r{len(rows)}"
            jobs = kw.get("jobs", 1)
            (rc2, res2), rt = timed(
                lambda res=res, target=target, jobs=jobs: run_module(
                    "pg_restore", cluster.conn_args(path=res["path"], target_db=target, create=True, jobs=jobs)
                )
            )
            assert rc2 == 0, res2.get("msg")
            count = cluster.psql("SELECT count(*) FROM events", target)
            assert int(count) == args.rows, count
            rows.append((label, t, res["bytes"], rt))

        print(
            f"Database: {size / 1e6:.0f} MB on disk ({args.rows} rows + index), PostgreSQL "
            f"{cluster.psql('SHOW server_version')}, {os.cpu_count()} cores.\n"
        )
        print("| method | backup s | size MB | restore s | backup speed vs baseline | size vs baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, t, sz, rt in rows:
            print(f"| {label} | {t:.1f} | {sz / 1e6:.1f} | {rt:.1f} | {base_t / t:.2f}x | {sz / rows[0][2]:.2f} |")
        print(
            "\npg_backup times include the full read-back verification, fsync and checksum; "
            "restore times include the checksum check."
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
