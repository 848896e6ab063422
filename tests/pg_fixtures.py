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
