"""WAL archiving with a real pgBackRest (Debian's 2.45) and a real
PostgreSQL. Its mirror off-site only grows (a storage host on loopback
enforces it: sshd with rrsync), and the prune run keeps what a recovery
needs (offsite_storage). When the repository's disk fills up: archive_command fails with a
clear error, PostgreSQL keeps every segment in pg_wal (nothing is lost or
overwritten), the metrics onebox-dr writes make WalArchivingFailing and
WalArchivingLagging fire (their promtool tests use the same names), and once
space is back every waiting segment is archived with no gap.

The repository sits on a 64 MB tmpfs mounted for the test (root)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time

import offsite_storage
import pytest
from ansible_collections.onebox.platform.plugins.module_utils import offsite, pitr
from ansible_collections.onebox.platform.plugins.module_utils.offsite import SEGMENT
from conftest import free_port, wait_for
from pg_fixtures import ArchivingCluster

pytestmark = pytest.mark.skipif(
    not shutil.which("pgbackrest") or os.geteuid() != 0, reason="pgbackrest (scripts/test.sh setup) and root"
)


@pytest.fixture
def archiving():
    """A cluster archiving to pgBackRest whose repository is a 64 MB tmpfs."""
    cluster = ArchivingCluster(repo_size_mb=64, extra="-c fsync=off")
    try:
        yield cluster
    finally:
        cluster.stop()


def archiver(psql):
    """pg_stat_archiver as onebox-dr reads it (module_utils pitr)."""
    return pitr.parse_archiver(psql(pitr.ARCHIVER_SQL))


def test_a_full_repository_disk_fails_archiving_loudly_and_loses_nothing(archiving):
    psql, repo = archiving.psql, archiving.repo
    psql("CREATE TABLE t (id serial PRIMARY KEY, payload text)")
    psql("SELECT pg_switch_wal()")
    wait_for(lambda: int(archiver(psql)["archived_count"]) > 0, timeout=90, interval=0.5)
    # The disk fills up.
    subprocess.run(["dd", "if=/dev/zero", f"of={repo}/filler", "bs=1M", "count=100"], capture_output=True, check=False)
    for _round in range(4):
        psql("INSERT INTO t (payload) SELECT repeat(md5(g::text), 20) FROM generate_series(1, 20000) g")
        psql("SELECT pg_switch_wal()")

    def stuck():
        now = archiver(psql)
        return now if int(now["failed_count"]) > 0 and int(now["ready_segments"]) > 3 else None

    state = wait_for(stuck, timeout=90, interval=0.5)
    assert float(state["last_failed_time"]) > float(state["last_archived_time"])
    # What an operator reads: pgBackRest's own words in PostgreSQL's log.
    log = archiving.log()
    assert "No space left on device" in log or "[047]" in log
    # The metrics the alerts read (WalArchivingFailing, WalArchivingLagging).
    text = pitr.metrics("t", {"backups": [], "status": 0}, state, time.time())
    assert 'onebox_pitr_wal_ready_segments{stanza="t"} ' + str(int(state["ready_segments"])) in text
    assert f'onebox_pitr_wal_failed_count{{stanza="t"}} {int(state["failed_count"])}' in text
    # Nothing is lost: the segments wait in pg_wal; with space back they all go.
    os.remove(f"{repo}/filler")
    wait_for(lambda: archiver(psql)["ready_segments"] == "0", timeout=90, interval=0.5)
    after = archiver(psql)
    assert float(after["last_archived_time"]) > float(after["last_failed_time"])
    assert archiving.backrest("check").returncode == 0
    # Every segment from the first to the last is in the repository.
    listed = archiving.backrest("repo-ls", "--recurse", "archive/t").stdout
    names = [line.rsplit("/", 1)[-1].split("-")[0] for line in listed.split()]
    numbers = sorted(int(n[-8:], 16) for n in names if len(n) == 24 and all(c in "0123456789ABCDEF" for c in n))
    assert numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))), names


@pytest.fixture
def storage(tmp_path):
    with offsite_storage.running(tmp_path) as box:
        yield box


def segments(root):
    """WAL segment names (24 hex digits) under ROOT's archive/."""
    return sorted(p.name[:24] for p in (root / "archive").rglob("*") if p.is_file() and SEGMENT.match(p.name))


def test_the_wal_mirror_only_grows_and_the_prune_run_keeps_what_recovery_needs(storage, tmp_path):
    """The server mirrors its pgBackRest repository through its own key
    (rrsync -no-del -no-overwrite as the storage host's forced command):
    it cannot delete or overwrite a segment there; pgBackRest's rewritten
    info files go up as new versions. The prune run, with its own key,
    removes the base backup pgBackRest expired on the server and the WAL
    only it needed; what is left restores, to the last row, into a new
    data directory."""
    cluster = ArchivingCluster(extra="-c fsync=off")
    try:
        psql = cluster.psql
        psql("CREATE TABLE ticks (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        psql("INSERT INTO ticks DEFAULT VALUES")
        assert cluster.backrest("--type=full", "backup").returncode == 0
        (tmp_path / "server-id").write_text("11111111-2222-3333-4444-555555555555\n")
        (tmp_path / "password").write_text("not used by the WAL mirror")
        cfg = dict(
            storage.server_settings(wal=True),
            password_file=str(tmp_path / "password"),
            server_id_file=str(tmp_path / "server-id"),
            stage_dir=str(tmp_path / "stage"),
            wal_repo=cluster.repo,
        )
        box = offsite.Offsite(cfg)

        def complete():
            return pitr.parse_info(cluster.backrest("--output=json", "info").stdout, "t")["backups"]

        def archived():
            psql("INSERT INTO ticks DEFAULT VALUES")
            segment = psql("SELECT pg_walfile_name(pg_switch_wal())")
            wait_for(lambda: archiver(psql)["ready_segments"] == "0" and segment <= last_archived(psql), 90, 0.5)

        archived()
        sent = box.wal_sync(complete, "t")
        first = complete()[0]["label"]
        mirror = storage.wal / "pgbackrest"
        assert (mirror / "backup" / "t" / first / "backup.manifest").exists()
        assert segments(mirror) == segments(type(mirror)(cluster.repo))
        assert not list(mirror.rglob("*.info"))
        versions = sorted((storage.wal / "info").iterdir())
        assert len(versions) == 1 and (versions[0] / "backup" / "t" / "backup.info").exists()

        # The server's own key: no deletion, no overwrite, of a segment or an info version.
        seg = next(p for p in (mirror / "archive").rglob("*") if p.is_file() and SEGMENT.match(p.name))
        held = {p: p.read_bytes() for p in storage.wal.rglob("*") if p.is_file()}
        rel = seg.relative_to(storage.wal)
        empty = tmp_path / "empty"
        empty.mkdir()
        refused = box.rsync("-r", "--delete", f"{empty}/", f"root@127.0.0.1:/{rel.parent}/")
        assert refused.returncode != 0 and "disabled" in refused.stderr, refused.stderr
        (tmp_path / "bad").write_bytes(b"not a WAL segment")
        box.rsync(str(tmp_path / "bad"), f"root@127.0.0.1:/{rel}")
        box.rsync(str(tmp_path / "bad"), f"root@127.0.0.1:/info/{versions[0].name}/backup/t/backup.info")
        assert box.rsync("--remove-source-files", f"root@127.0.0.1:/{rel}", str(tmp_path / "x")).returncode != 0
        assert {p: p.read_bytes() for p in held} == held
        assert box.probe()["wal"] is True

        # A second full backup; pgBackRest expires the first on the server.
        assert cluster.backrest("--type=full", "backup").returncode == 0
        archived()
        assert cluster.backrest("--repo1-retention-full=1", "expire").returncode == 0
        assert [b["label"] for b in complete()] != [first]
        second = complete()[0]
        archived()
        sent = box.wal_sync(complete, "t", done=sent)
        # The mirror still has the first backup and its WAL: the server cannot delete.
        assert (mirror / "backup" / "t" / first / "backup.manifest").exists()
        assert segments(mirror)[0] < second["archive_start"]
        assert len(list((storage.wal / "info").iterdir())) >= 2
        rows = psql("SELECT count(*) FROM ticks")

        # The prune run, with its own key (rrsync without restrictions).
        pruner = offsite.Offsite(dict(storage.prune_settings(), password_file=str(tmp_path / "password")))
        dry = pruner.wal_prune(1, dry_run=True)
        assert dry["deleted_backups"] == [first] and dry["dry_run"]
        assert (mirror / "backup" / "t" / first).exists()
        done = pruner.wal_prune(1)
        assert done["deleted_backups"] == [first]
        assert done["wal_from"] == {"t": second["archive_start"]}
        assert not (mirror / "backup" / "t" / first).exists()
        assert segments(mirror)[0] == second["archive_start"]
        assert (mirror / "backup" / "t" / second["label"] / "backup.manifest").exists()
        # A second run has nothing left to do.
        assert pruner.wal_prune(1)["deleted_files"] == 0

        # Recovery: the mirror fetched with the server's credentials (read
        # only there), verified, restored into a new data directory.
        # (in the cluster's directory: the postgres user reaches it)
        work = pathlib.Path(cluster.top) / "recovery"
        fetched = work / "fetched"
        got = box.wal_fetch(str(fetched))
        assert got["server_id"].startswith("11111111") and got["info_version"] == sent["info_version"]
        subprocess.run(["chown", "-R", "postgres:postgres", str(work)], check=True)
        conf = work / "fetched.conf"
        conf.write_text(
            pathlib.Path(cluster.conf).read_text().replace(f"repo1-path={cluster.repo}", f"repo1-path={fetched}")
        )
        shutil.chown(conf, "postgres", "postgres")
        verify = cluster.as_pg(
            "pgbackrest", f"--config={conf}", "--stanza=t", "--log-level-console=info", "verify", check=False
        )
        assert verify.returncode == 0 and "invalid result" not in verify.stdout, verify.stdout + verify.stderr
        data = work / "restored"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        restore = cluster.as_pg(
            "pgbackrest", f"--config={conf}", "--stanza=t", f"--pg1-path={data}", "restore", check=False
        )
        assert restore.returncode == 0, restore.stderr
        # Its WAL comes from the fetched copy: the server's repository goes away.
        assert f"--config={conf}" in (data / "postgresql.auto.conf").read_text()
        os.rename(cluster.repo, f"{cluster.repo}.gone")
        port = free_port()
        cluster.as_pg(
            f"{cluster.bin}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(work / "restored.log"),
            "-w",
            "-o",
            f"-p {port} -k {work} -c listen_addresses='' -c archive_mode=off",
            "start",
        )
        try:

            def query(sql):
                return cluster.as_pg(
                    f"{cluster.bin}/psql",
                    "-h",
                    str(work),
                    "-p",
                    str(port),
                    "-X",
                    "-A",
                    "-t",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                    check=False,
                ).stdout.strip()

            wait_for(lambda: query("SELECT pg_is_in_recovery()") == "f", timeout=90, interval=0.5)
            assert query("SELECT count(*) FROM ticks") == rows
        finally:
            cluster.as_pg(f"{cluster.bin}/pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
    finally:
        cluster.stop()


def last_archived(psql):
    return psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24]
