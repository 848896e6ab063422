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
import tempfile
import time

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import pitr
from pg_fixtures import pg_bin

pytestmark = pytest.mark.skipif(
    not shutil.which("pgbackrest") or os.geteuid() != 0, reason="pgbackrest (scripts/test.sh setup) and root"
)


def as_pg(*argv, check=True):
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=check)


@pytest.fixture
def archiving():
    """A cluster archiving to pgBackRest whose repository is a small tmpfs."""
    top = tempfile.mkdtemp(prefix="onebox-wal-")
    os.chmod(top, 0o755)
    repo, data, conf = f"{top}/repo", f"{top}/data", f"{top}/pgbackrest.conf"
    os.mkdir(repo)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", repo], check=True)
    shutil.chown(repo, "postgres", "postgres")
    shutil.chown(top, "postgres", "postgres")
    with open(conf, "w") as fh:
        fh.write(
            f"[global]\nrepo1-path={repo}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=test-only-passphrase-123\n"
            f"log-level-file=off\nlog-level-console=warn\nlock-path={top}/lock\n\n"
            f"[t]\npg1-path={data}\npg1-socket-path={top}\npg1-port=5499\n"
        )
    shutil.chown(conf, "postgres", "postgres")
    binary = pg_bin()
    as_pg(f"{binary}/initdb", "-U", "postgres", "--auth-local=trust", "-D", data)
    command = f"pgbackrest --config={conf} --stanza=t archive-push %p"
    options = (
        f"-p 5499 -k {top} -c listen_addresses='' -c wal_level=replica -c archive_mode=on "
        f'-c "archive_command={command}" -c archive_timeout=1 -c fsync=off'
    )
    as_pg(f"{binary}/pg_ctl", "-D", data, "-l", f"{top}/log", "-w", "-o", options, "start")

    def psql(sql):
        return as_pg(
            f"{binary}/psql", "-h", top, "-p", "5499", "-X", "-A", "-t", "-F", "|", "-d", "postgres", "-c", sql
        )

    def backrest(*args):
        return as_pg("pgbackrest", f"--config={conf}", "--stanza=t", *args, check=False)

    assert backrest("stanza-create").returncode == 0
    try:
        yield {"psql": psql, "backrest": backrest, "repo": repo, "data": data}
    finally:
        as_pg(f"{binary}/pg_ctl", "-D", data, "-m", "immediate", "stop", check=False)
        subprocess.run(["umount", repo], check=False)
        shutil.rmtree(top, ignore_errors=True)


def archiver(psql):
    row = psql(
        "SELECT archived_count, failed_count, coalesce(extract(epoch FROM last_archived_time), 0), "
        "coalesce(extract(epoch FROM last_failed_time), 0), "
        "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') FROM pg_stat_archiver"
    ).stdout.strip()
    a, f, la, lf, ready = row.split("|")
    return {
        "archived_count": a,
        "failed_count": f,
        "last_archived_time": la,
        "last_failed_time": lf,
        "ready_segments": ready,
    }


def until(check, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"not reached in {timeout} s")


def test_a_full_repository_disk_fails_archiving_loudly_and_loses_nothing(archiving):
    psql, repo = archiving["psql"], archiving["repo"]
    psql("CREATE TABLE t (id serial PRIMARY KEY, payload text)")
    psql("SELECT pg_switch_wal()")
    until(lambda: int(archiver(psql)["archived_count"]) > 0)
    # The disk fills up.
    subprocess.run(["dd", "if=/dev/zero", f"of={repo}/filler", "bs=1M", "count=100"], capture_output=True, check=False)
    for _round in range(4):
        psql("INSERT INTO t (payload) SELECT repeat(md5(g::text), 20) FROM generate_series(1, 20000) g")
        psql("SELECT pg_switch_wal()")

    def stuck():
        now = archiver(psql)
        return now if int(now["failed_count"]) > 0 and int(now["ready_segments"]) > 3 else None

    state = until(stuck)
    assert float(state["last_failed_time"]) > float(state["last_archived_time"])
    # What an operator reads: pgBackRest's own words in PostgreSQL's log.
    with open(os.path.join(os.path.dirname(archiving["data"]), "log"), encoding="utf-8") as fh:
        log = fh.read()
    assert "No space left on device" in log or "[047]" in log
    # The metrics the alerts read (WalArchivingFailing, WalArchivingLagging).
    text = pitr.metrics("t", {"backups": [], "status": 0}, state, time.time())
    assert 'onebox_pitr_wal_ready_segments{stanza="t"} ' + str(int(state["ready_segments"])) in text
    assert f'onebox_pitr_wal_failed_count{{stanza="t"}} {int(state["failed_count"])}' in text
    # Nothing is lost: the segments wait in pg_wal; with space back they all go.
    os.remove(f"{repo}/filler")
    until(lambda: archiver(psql)["ready_segments"] == "0")
    after = archiver(psql)
    assert float(after["last_archived_time"]) > float(after["last_failed_time"])
    assert archiving["backrest"]("check").returncode == 0
    # Every segment from the first to the last is in the repository.
    listed = archiving["backrest"]("repo-ls", "--recurse", "archive/t").stdout
    names = [line.rsplit("/", 1)[-1].split("-")[0] for line in listed.split()]
    numbers = sorted(int(n[-8:], 16) for n in names if len(n) == 24 and all(c in "0123456789ABCDEF" for c in n))
    assert numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))), names
