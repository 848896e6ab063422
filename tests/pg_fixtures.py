"""A throwaway PostgreSQL cluster on loopback and a PostgreSQL container."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
from conftest import free_port

PASSWORD = "s3cret-Pw-not-on-argv"


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing (scripts/test.sh setup installs postgresql)")
    return os.path.dirname(found[-1])


class Cluster:
    def __init__(self):
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix="onebox-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.password = PASSWORD
        shutil.chown(self.dir, "postgres", "postgres")
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as fh:
            fh.write(PASSWORD)
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_pg(
            [
                f"{self.bin}/initdb",
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-D",
                self.data,
            ]
        )
        os.unlink(pwfile)
        self._as_pg(
            [
                f"{self.bin}/pg_ctl",
                "-D",
                self.data,
                "-l",
                f"{self.dir}/log",
                "-w",
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ]
        )

    def _as_pg(self, argv):
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def env(self):
        return dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password)

    def psql(self, sql, db="postgres"):
        out = subprocess.run(
            [f"{self.bin}/psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def conn_args(self, **kw):
        return dict(host=self.host, port=self.port, user=self.user, password=self.password, bin_dir=self.bin, **kw)

    def stop(self):
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(psql, db, rows):
    psql(
        "CREATE TABLE items (id serial PRIMARY KEY, payload text NOT NULL);"
        f"INSERT INTO items (payload) SELECT md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {rows}) g;"
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'hello'), (2, 'world');",
        db,
    )


@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture
def appdb(cluster):
    name = f"app_{uuid.uuid4().hex[:8]}"
    cluster.psql(f"CREATE DATABASE {name}")
    fill(cluster.psql, name, 2000)
    yield name
    cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Container:
    image = "local/postgres:15"

    def __init__(self):
        self.name = f"onebox-test-pg-{uuid.uuid4().hex[:6]}"
        r = subprocess.run(
            ["docker", "run", "-d", "--name", self.name, "-e", f"POSTGRES_PASSWORD={PASSWORD}", self.image],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            pytest.fail(f"cannot start {self.image} (scripts/images.sh builds it): {r.stderr}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", self.name],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if st == "healthy":
                return
            time.sleep(0.5)
        pytest.fail("PostgreSQL container did not become healthy")

    def psql(self, sql, db="postgres"):
        out = subprocess.run(
            [
                "docker",
                "exec",
                "-i",
                self.name,
                "psql",
                "-U",
                "postgres",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def stop(self):
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def pg_container():
    c = Container()
    yield c
    c.stop()


@pytest.fixture
def containerdb(pg_container):
    name = f"capp_{uuid.uuid4().hex[:8]}"
    pg_container.psql(f"CREATE DATABASE {name}")
    fill(pg_container.psql, name, 2000)
    yield name
    pg_container.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class ArchivingCluster:
    """A cluster whose archive_command pushes WAL to a pgBackRest repository
    (Debian's pgbackrest, encrypted): the postgres role's setup, on the host.
    REPO_SIZE_MB mounts the repository on a tmpfs of that size (root)."""

    def __init__(self, stanza="t", archive_timeout=1, repo_size_mb=0, extra=""):
        self.bin = pg_bin()
        self.stanza = stanza
        self.top = tempfile.mkdtemp(prefix="onebox-pitr-")
        os.chmod(self.top, 0o755)
        self.repo, self.data, self.conf = f"{self.top}/repo", f"{self.top}/data", f"{self.top}/pgbackrest.conf"
        self.port = free_port()
        os.mkdir(self.repo)
        self.mounted = bool(repo_size_mb)
        if self.mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={repo_size_mb}m", "tmpfs", self.repo], check=True)
        for path in (self.top, self.repo):
            shutil.chown(path, "postgres", "postgres")
        with open(self.conf, "w") as fh:
            fh.write(
                f"[global]\nrepo1-path={self.repo}\nrepo1-cipher-type=aes-256-cbc\n"
                "repo1-cipher-pass=test-only-passphrase-123\ncompress-type=zst\nstart-fast=y\n"
                f"log-level-file=off\nlog-level-console=warn\nlock-path={self.top}/lock\n\n"
                f"[{stanza}]\npg1-path={self.data}\npg1-socket-path={self.top}\npg1-port={self.port}\n"
            )
        shutil.chown(self.conf, "postgres", "postgres")
        self.as_pg(f"{self.bin}/initdb", "-U", "postgres", "--auth-local=trust", "-D", self.data)
        command = f"pgbackrest --config={self.conf} --stanza={stanza} archive-push %p"
        options = (
            f"-p {self.port} -k {self.top} -c listen_addresses='' -c wal_level=replica -c archive_mode=on "
            f'-c "archive_command={command}" -c archive_timeout={archive_timeout} {extra}'
        )
        self.as_pg(f"{self.bin}/pg_ctl", "-D", self.data, "-l", f"{self.top}/log", "-w", "-o", options, "start")
        created = self.backrest("stanza-create")
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"pgbackrest stanza-create: {created.stderr}")

    @staticmethod
    def as_pg(*argv, check=True):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=check)

    def psql(self, sql, db="postgres"):
        return self.as_pg(
            f"{self.bin}/psql", "-h", self.top, "-p", str(self.port), "-X", "-A", "-t", "-F", "|", "-d", db, "-c", sql
        ).stdout.strip()

    def backrest(self, *args):
        return self.as_pg("pgbackrest", f"--config={self.conf}", f"--stanza={self.stanza}", *args, check=False)

    def log(self):
        with open(f"{self.top}/log", encoding="utf-8") as fh:
            return fh.read()

    def stop(self):
        self.as_pg(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        if self.mounted:
            subprocess.run(["umount", self.repo], check=False)
        shutil.rmtree(self.top, ignore_errors=True)
