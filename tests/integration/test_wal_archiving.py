"""WAL archiving with a real pgBackRest (Debian's 2.45) and a real
PostgreSQL, when the repository's disk fills up: archive_command fails with a
clear error, PostgreSQL keeps every segment in pg_wal (nothing is lost or
overwritten), the metrics onebox-dr writes make WalArchivingFailing and
WalArchivingLagging fire (their promtool tests use the same names), and once
space is back every waiting segment is archived with no gap.

The repository sits on a 64 MB tmpfs mounted for the test (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import pitr
from conftest import wait_for
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
