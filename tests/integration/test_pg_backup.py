"""pg_backup and pg_restore against real PostgreSQL (R11, R42)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
import threading
import uuid

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import pg_backup as engine
from conftest import run_module
from pg_fixtures import PASSWORD


def backup(cluster, backup_dir, dbname, **kw):
    return run_module("pg_backup", cluster.conn_args(backup_dir=str(backup_dir), dbname=dbname, **kw))


def restore(cluster, **kw):
    return run_module("pg_restore", cluster.conn_args(**kw))


def counts(psql, db):
    return psql("SELECT (SELECT count(*) FROM items) || '/' || (SELECT count(*) FROM notes)", db)


def entries(directory):
    return sorted(os.listdir(directory))


def fake_backup(directory, dbname, when, ext="dump", verified=True):
    name = f"{dbname}-{when.strftime('%Y%m%dT%H%M%SZ')}.{ext}"
    with open(os.path.join(directory, name), "wb") as fh:
        fh.write(b"old backup")
    if verified:
        digest = engine.sha256_file(os.path.join(directory, name))
        with open(os.path.join(directory, name + ".sha256"), "w") as fh:
            fh.write(f"{digest}  {name}\n")
    return name


@pytest.mark.parametrize(
    "fmt,compression,ext",
    [
        ("custom", "gzip", "dump"),
        ("plain", "gzip", "sql.gz"),
        ("plain", "none", "sql"),
        ("plain", "zstd", "sql.zst"),
        ("plain", "lz4", "sql.lz4"),
        ("directory", "gzip", "dir"),
    ],
)
def test_backup_and_restore_round_trip(cluster, appdb, tmp_path, fmt, compression, ext):
    jobs = 2 if fmt == "directory" else 1
    rc, res = backup(cluster, tmp_path, appdb, format=fmt, compression=compression, jobs=jobs)
    assert rc == 0, res.get("msg")
    path = res["path"]
    assert os.path.basename(path).startswith(f"{appdb}-") and path.endswith(f".{ext}")
    assert stat.S_IMODE(os.stat(path).st_mode) == (0o700 if fmt == "directory" else 0o600)
    assert stat.S_IMODE(os.stat(path + ".sha256").st_mode) == 0o600
    assert res["bytes"] > 0 and len(res["sha256"]) == 64
    if fmt == "directory":
        total = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)
        assert res["bytes"] == total  # not the directory entry's size
    # The checksum file is what sha256sum expects.
    check = subprocess.run(
        ["sha256sum", "-c", os.path.basename(path) + ".sha256"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # Its first line (a comment to sha256sum) records when the backup was completed.
    assert engine.manifest_completed(path) == dt.datetime.strptime(res["completed"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.timezone.utc
    )
    # No leftovers: only the backup, its checksum and the lock file.
    assert entries(tmp_path) == sorted(
        [os.path.basename(path), os.path.basename(path) + ".sha256", ".onebox-backup.lock"]
    )
    scratch = f"{appdb}_r"
    rc, res = restore(cluster, path=path, target_db=scratch, create=True, jobs=jobs)
    try:
        assert rc == 0, res.get("msg")
        assert res["created"] is True and res["tables"] == 2 and res["format"] == fmt
        assert counts(cluster.psql, scratch) == "2000/2"
    finally:
        cluster.psql(f"DROP DATABASE IF EXISTS {scratch}")


@pytest.mark.parametrize("compression,ext", [("zstd", "sql.zst"), ("lz4", "sql.lz4"), ("gzip", "sql.gz")])
def test_a_cut_compressed_plain_dump_fails_verification(cluster, appdb, tmp_path, compression, ext):
    rc, res = backup(cluster, tmp_path, appdb, format="plain", compression=compression)
    assert rc == 0, res.get("msg")
    engine.verify_archive(None, res["path"], "plain")  # the good one reads back in full
    cut = str(tmp_path / f"cut.{ext}")
    with open(res["path"], "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read()[: os.path.getsize(res["path"]) // 2])
    with pytest.raises(engine.BackupError) as err:
        engine.verify_archive(None, cut, "plain")
    assert cut in str(err.value) and ("decompress" in str(err.value) or "damaged" in str(err.value))


def test_backup_inside_a_container_and_restore_there(pg_container, containerdb, tmp_path):
    args = dict(container=pg_container.name, backup_dir=str(tmp_path), dbname=containerdb)
    rc, res = run_module("pg_backup", args)
    assert rc == 0, res.get("msg")
    assert res["path"].endswith(".dump")
    rc, res = run_module(
        "pg_restore",
        dict(
            container=pg_container.name,
            backup_dir=str(tmp_path),
            dbname=containerdb,
            target_db=f"{containerdb}_r",
            create=True,
        ),
    )
    assert rc == 0, res.get("msg")
    assert counts(pg_container.psql, f"{containerdb}_r") == "2000/2"
    pg_container.psql(f"DROP DATABASE {containerdb}_r")


def test_directory_backup_inside_a_container(pg_container, containerdb, tmp_path):
    args = dict(container=pg_container.name, backup_dir=str(tmp_path), dbname=containerdb, format="directory", jobs=2)
    rc, res = run_module("pg_backup", args)
    assert rc == 0, res.get("msg")
    assert os.path.isfile(os.path.join(res["path"], "toc.dat"))
    rc, res = run_module(
        "pg_restore",
        dict(container=pg_container.name, path=res["path"], target_db=f"{containerdb}_d", create=True, jobs=2),
    )
    assert rc == 0, res.get("msg")
    assert counts(pg_container.psql, f"{containerdb}_d") == "2000/2"
    pg_container.psql(f"DROP DATABASE {containerdb}_d")


def test_container_backup_with_password_over_tcp_inside(pg_container, containerdb, tmp_path):
    args = dict(
        container=pg_container.name,
        host="127.0.0.1",
        user="postgres",
        password=PASSWORD,
        backup_dir=str(tmp_path),
        dbname=containerdb,
    )
    rc, res = run_module("pg_backup", args)
    assert rc == 0, res.get("msg")
    args["password"] = "wrong"
    rc, res = run_module("pg_backup", args)
    assert rc == 1 and "password authentication failed" in res["msg"]


def test_password_never_on_a_command_line(cluster, tmp_path):
    """Watch every process's argv while a dump runs."""
    db = f"big_{uuid.uuid4().hex[:6]}"
    cluster.psql(f"CREATE DATABASE {db}")
    cluster.psql("CREATE TABLE t AS SELECT g, md5(g::text) m FROM generate_series(1, 300000) g", db)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            cmd = fh.read()
                    except OSError:
                        continue
                    if b"pg_dump" in cmd or b"pg_restore" in cmd:
                        seen.append(cmd)

    t = threading.Thread(target=watch)
    t.start()
    try:
        rc, res = backup(cluster, tmp_path, db)
    finally:
        stop.set()
        t.join()
        cluster.psql(f"DROP DATABASE {db}")
    assert rc == 0, res.get("msg")
    assert seen, "the watcher never saw pg_dump run"
    assert not [c for c in seen if PASSWORD.encode() in c]
    assert PASSWORD not in str(res)


def test_wrong_password_leaves_nothing_and_prunes_nothing(cluster, appdb, tmp_path):
    old = [fake_backup(tmp_path, appdb, dt.datetime(2026, 1, d, tzinfo=dt.timezone.utc)) for d in (1, 2, 3)]
    before = entries(tmp_path)
    args = cluster.conn_args(backup_dir=str(tmp_path), dbname=appdb, keep_last=1)
    args["password"] = "wrong"
    rc, res = run_module("pg_backup", args)
    assert rc == 1
    assert "password authentication failed" in res["msg"]
    assert "never on the command line" in res["msg"]
    assert "nothing was pruned" in res["msg"]
    assert [e for e in entries(tmp_path) if e != ".onebox-backup.lock"] == before
    assert all(os.path.exists(tmp_path / n) for n in old)


def test_unknown_database(cluster, tmp_path):
    rc, res = backup(cluster, tmp_path, "no_such_db")
    assert rc == 1 and 'database "no_such_db" does not exist' in res["msg"]
    assert entries(tmp_path) == [".onebox-backup.lock"]


def test_destination_missing(cluster, appdb, tmp_path):
    rc, res = backup(cluster, tmp_path / "nope", appdb)
    assert rc == 1 and "does not exist or is not a directory" in res["msg"]


@pytest.fixture
def small_mount(tmp_path):
    """A real 256 KiB tmpfs, for disk-full and read-only cases."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (tests run as root): {r.stderr}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_removes_partial_and_keeps_old_backups(cluster, tmp_path, small_mount):
    db = f"full_{uuid.uuid4().hex[:6]}"
    cluster.psql(f"CREATE DATABASE {db}")
    # Random text compresses poorly: well over 256 KiB as a dump.
    cluster.psql(
        "CREATE TABLE t AS SELECT g, md5(random()::text) || md5(random()::text) m FROM generate_series(1, 60000) g", db
    )
    old = fake_backup(small_mount, db, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    try:
        rc, res = backup(cluster, small_mount, db, keep_last=1)
    finally:
        cluster.psql(f"DROP DATABASE {db}")
    assert rc == 1
    assert "no space left" in res["msg"] and "no older backup was pruned" in res["msg"]
    assert entries(small_mount) == sorted([old, old + ".sha256", ".onebox-backup.lock"])


def test_read_only_destination(cluster, appdb, small_mount):
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    rc, res = backup(cluster, small_mount, appdb)
    assert rc == 1 and "not writable" in res["msg"]


def test_truncated_archive_passes_list_but_fails_full_read(cluster, appdb, tmp_path):
    """Why the full read matters: pg_restore --list reads only the table of
    contents, so a dump cut in its data section still lists."""
    rc, res = backup(cluster, tmp_path, appdb, compression="none")
    assert rc == 0, res.get("msg")
    cut = tmp_path / "cut.dump"
    shutil.copy(res["path"], cut)
    size = os.path.getsize(cut)
    with open(cut, "r+b") as fh:
        fh.truncate(int(size * 0.6))
    listing = subprocess.run([f"{cluster.bin}/pg_restore", "--list", str(cut)], capture_output=True, check=False)
    assert listing.returncode == 0, "pg_restore --list should pass on a file cut in its data section"
    runner = engine.PgRunner(bin_dir=cluster.bin)
    with pytest.raises(engine.BackupError):
        engine.verify_archive(runner, str(cut), "custom")
    # A gzip-compressed plain dump cut in half fails its full decode.
    rc, res2 = backup(cluster, tmp_path, appdb, format="plain")
    assert rc == 0, res2.get("msg")
    with open(res2["path"], "rb") as fh:
        data = fh.read()
    gz = tmp_path / "cut.sql.gz"
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(engine.BackupError, match=r"incomplete|damaged"):
        engine.verify_archive(runner, str(gz), "plain", "gzip")


def test_failed_verification_keeps_nothing_and_prunes_nothing(cluster, appdb, tmp_path):
    """A dump that pg_dump says succeeded but does not read back is thrown away."""
    old = fake_backup(tmp_path, appdb, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))

    class Broken(engine.Backup):
        def _dump(self, partial, tool_major):
            super()._dump(partial, tool_major)
            with open(partial, "r+b") as fh:
                fh.truncate(os.path.getsize(partial) // 2)

    runner = engine.PgRunner(**{k: v for k, v in cluster.conn_args().items() if k != "bin_dir"}, bin_dir=cluster.bin)
    job = Broken(runner, str(tmp_path), appdb, compression="none", retention={"keep_last": 1})
    with pytest.raises(engine.BackupError):
        job.run()
    assert entries(tmp_path) == sorted([old, old + ".sha256", ".onebox-backup.lock"])


def test_corrupted_backup_is_never_restored(cluster, appdb, tmp_path):
    rc, res = backup(cluster, tmp_path, appdb)
    assert rc == 0, res.get("msg")
    with open(res["path"], "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    cluster.psql("DELETE FROM items WHERE id > 10", appdb)
    rc, res = restore(cluster, path=res["path"], target_db=appdb, confirm_overwrite=True)
    assert rc == 1 and "checksum mismatch" in res["msg"] and "not restored" in res["msg"]
    assert counts(cluster.psql, appdb) == "10/2"


def test_restore_over_a_live_database_needs_confirmation(cluster, appdb, tmp_path):
    rc, res = backup(cluster, tmp_path, appdb)
    assert rc == 0, res.get("msg")
    cluster.psql("DELETE FROM items WHERE id > 100; UPDATE notes SET body = 'changed'", appdb)
    rc, res = restore(cluster, backup_dir=str(tmp_path), dbname=appdb)
    assert rc == 1
    assert f"database {appdb} is live" in res["msg"] and "confirm_overwrite" in res["msg"]
    assert counts(cluster.psql, appdb) == "100/2"
    rc, res = restore(cluster, backup_dir=str(tmp_path), dbname=appdb, confirm_overwrite=True)
    assert rc == 0, res.get("msg")
    assert counts(cluster.psql, appdb) == "2000/2"
    assert cluster.psql("SELECT body FROM notes WHERE id = 1", appdb) == "hello"


def test_restore_stops_at_the_first_error_and_rolls_back(cluster, appdb, tmp_path):
    rc, res = backup(cluster, tmp_path, appdb)
    assert rc == 0, res.get("msg")
    scratch = f"{appdb}_e"
    # A target that already has a conflicting object the dump does not clean.
    cluster.psql(f"CREATE DATABASE {scratch}")
    cluster.psql("CREATE TABLE blocker (x int); CREATE VIEW items AS SELECT 1 AS id", scratch)
    try:
        rc, res = restore(cluster, path=res["path"], target_db=scratch, confirm_overwrite=True, clean=False)
        assert rc == 1 and "pg_restore failed" in res["msg"]
        # One transaction: nothing of the dump was left half-restored.
        assert cluster.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'notes'", scratch) == "0"
    finally:
        cluster.psql(f"DROP DATABASE {scratch} WITH (FORCE)")


def test_restore_without_target_or_create(cluster, appdb, tmp_path):
    rc, res = backup(cluster, tmp_path, appdb)
    rc, res = restore(cluster, path=res["path"], target_db="absent_db")
    assert rc == 1 and "does not exist; set create: true" in res["msg"]


def test_restore_latest_when_none(cluster, tmp_path):
    rc, res = restore(cluster, backup_dir=str(tmp_path), dbname="app")
    assert rc == 1 and "no verified backup of app" in res["msg"]


def test_lock_makes_a_second_run_wait_then_fail(cluster, appdb, tmp_path):
    with engine.Lock(str(tmp_path)):
        rc, res = backup(cluster, tmp_path, appdb, lock_timeout=1)
    assert rc == 1 and "another backup or restore holds" in res["msg"]
    assert f"pid {os.getpid()}" in res["msg"]
    rc, res = backup(cluster, tmp_path, appdb, lock_timeout=1)
    assert rc == 0, res.get("msg")


def test_retention_prunes_only_its_own_files(cluster, appdb, tmp_path):
    utc = dt.timezone.utc
    olds = [fake_backup(tmp_path, appdb, dt.datetime(2026, 1, d, 3, tzinfo=utc)) for d in range(1, 6)]
    unverified = fake_backup(tmp_path, appdb, dt.datetime(2025, 1, 1, tzinfo=utc), verified=False)
    other_db = fake_backup(tmp_path, "otherdb", dt.datetime(2025, 1, 1, tzinfo=utc))
    for stray in ("notes.txt", f"{appdb}-latest.dump", f"{appdb}-20260101T000000Z.dump.bak"):
        (tmp_path / stray).write_text("mine")
    (tmp_path / f".{appdb}-20250101T000000Z.dump.partial").write_text("killed run")
    rc, res = backup(cluster, tmp_path, appdb, keep_last=2, keep_daily=3)
    assert rc == 0, res.get("msg")
    new = os.path.basename(res["path"])
    # Newest, plus keep_last 2 (new, Jan 5), plus daily 3 (new's day, Jan 5, Jan 4).
    assert res["kept"] == [new, olds[4], olds[3]]
    assert sorted(res["pruned"]) == sorted(olds[:3])
    assert res["removed_partials"] == [f".{appdb}-20250101T000000Z.dump.partial"]
    left = set(entries(tmp_path))
    for name in (unverified, other_db, "notes.txt", f"{appdb}-latest.dump", f"{appdb}-20260101T000000Z.dump.bak"):
        assert name in left
    for name in olds[:3]:
        assert name not in left and name + ".sha256" not in left


def warnings(res):
    """The module's warnings as text (ansible-core 2.19 returns each as an event)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in res.get("warnings", [])]


def test_a_backup_dated_in_the_future_is_kept_but_never_the_newest(cluster, appdb, tmp_path):
    """Taken while the clock was a year ahead: kept and reported, but it holds
    no retention slot and no restore picks it."""
    utc = dt.timezone.utc
    now = dt.datetime.now(utc)
    olds = [fake_backup(tmp_path, appdb, now - dt.timedelta(days=d)) for d in (3, 2, 1)]
    ahead = fake_backup(tmp_path, appdb, now + dt.timedelta(days=365))
    rc, res = run_module(
        "pg_backup", cluster.conn_args(backup_dir=str(tmp_path), dbname=appdb, keep_last=2), check=True
    )
    assert rc == 0 and res["future"] == [ahead] and sorted(res["pruned"]) == sorted(olds[:2]), res
    rc, res = backup(cluster, tmp_path, appdb, keep_last=2)
    assert rc == 0, res.get("msg")
    new = os.path.basename(res["path"])
    assert res["kept"] == [new, olds[2], ahead] and sorted(res["pruned"]) == sorted(olds[:2])
    assert res["future"] == [ahead]
    (warning,) = warnings(res)
    assert f"{ahead} (" in warning and "never count as the newest" in warning and "timedatectl" in warning
    assert ahead in entries(tmp_path) and f"{ahead}.sha256" in entries(tmp_path)
    # The restore takes the real newest backup, and says which one it passed over.
    scratch = f"{appdb}_future"
    rc, res = restore(cluster, backup_dir=str(tmp_path), dbname=appdb, target_db=scratch, create=True)
    try:
        assert rc == 0, res.get("msg")
        assert res["path"] == os.path.join(str(tmp_path), new)
        assert any(ahead in w for w in warnings(res))
        assert counts(cluster.psql, scratch) == "2000/2"
    finally:
        cluster.psql(f"DROP DATABASE IF EXISTS {scratch}")


def test_check_mode_lists_what_would_be_pruned(cluster, appdb, tmp_path):
    utc = dt.timezone.utc
    olds = [fake_backup(tmp_path, appdb, dt.datetime(2026, 1, d, tzinfo=utc)) for d in (1, 2, 3)]
    before = entries(tmp_path)
    rc, res = run_module(
        "pg_backup", cluster.conn_args(backup_dir=str(tmp_path), dbname=appdb, keep_last=2), check=True
    )
    assert rc == 0, res.get("msg")
    assert res["changed"] is True
    assert sorted(res["pruned"]) == sorted(olds[:2])
    assert entries(tmp_path) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (dict(format="custom", jobs=2), "jobs > 1 needs format: directory"),
        (dict(compression="zstd"), "compression zstd needs pg_dump 16 or newer"),
        (dict(keep_last=-1), "keep_last must not be negative"),
        (dict(compression_level=99), "compression_level must be 0..22"),
    ],
)
def test_bad_backup_input(cluster, appdb, tmp_path, args, message):
    rc, res = backup(cluster, tmp_path, appdb, **args)
    assert rc == 1 and message in res["msg"]
    assert [e for e in entries(tmp_path) if e != ".onebox-backup.lock"] == []


def test_the_container_is_shaped_like_the_official_image(pg_container):
    """`docker exec` runs as root there, as in the official postgres image:
    a fixture with USER postgres would hide a missing user (role "root")."""
    who = subprocess.run(
        ["docker", "exec", pg_container.name, "id", "-un"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert who == "root"
    # libpq left to itself asks for role "root", which does not exist there.
    bare = subprocess.run(
        ["docker", "exec", pg_container.name, "psql", "-X", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bare.returncode != 0 and 'role "root" does not exist' in bare.stderr
