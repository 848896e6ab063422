"""pg_app_role against a real PostgreSQL container shaped like the official
image (R62): each app's own login role, owner of its database only, no
superuser; another app's role cannot connect; COPY ... TO PROGRAM refused;
an existing database moved over keeps its data and gives its objects to the
role."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import pg_access
from conftest import run_module

PW_A = "app-a-password-not-a-secret"
PW_B = "app-b-password-not-a-secret"


def role(pg, name, db, password, check=False, **kw):
    args = dict(container=pg.name, role=name, database=db, **kw)
    if password is not None:
        args["password"] = password
    return run_module("pg_app_role", args, check=check)


def as_role(pg, user, password, db, sql):
    """psql over TCP inside the container as USER (scram): (rc, output)."""
    proc = subprocess.run(
        ["docker", "exec", "-i", "-e", f"PGPASSWORD={password}", pg.name, "psql", "-h", "127.0.0.1", "-U", user,
         "-d", db, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:6]
    return f"a_{tag}", f"b_{tag}"


def test_the_scram_verifier_is_the_one_postgresql_makes(pg_container):
    name = f"v_{uuid.uuid4().hex[:6]}"
    pg_container.psql(f"CREATE ROLE {name} LOGIN PASSWORD 'correct horse battery'")
    stored = pg_container.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")
    assert pg_access.scram_matches(stored, "correct horse battery")
    assert not pg_access.scram_matches(stored, "correct horse battery!")
    assert not pg_access.scram_matches("md5abcdef", "x")
    ours = pg_access.scram_verifier("correct horse battery", salt=b"0123456789abcdef")
    assert pg_access.scram_matches(ours, "correct horse battery")
    pg_container.psql(f"DROP ROLE {name}")


def test_a_new_app_gets_its_role_and_database_and_nothing_else(pg_container, names):
    a, _b = names
    rc, out = role(pg_container, a, a, PW_A)
    assert rc == 0 and out["changed"], out
    assert f"create login role {a}" in out["changes"] and f"create database {a} owned by {a}" in out["changes"]
    assert PW_A not in str(out)
    flags = pg_container.psql(
        f"SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles "
        f"WHERE rolname = '{a}'"
    )
    assert flags == "f|f|f|f|f|t"
    assert pg_container.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{a}'") == a
    # Its role works over TCP with its password (scram), and makes tables.
    rc, got = as_role(
        pg_container, a, PW_A, a, "CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT count(*) FROM t"
    )
    assert rc == 0 and got.endswith("1"), got
    # Run again: nothing to do.
    rc, again = role(pg_container, a, a, PW_A)
    assert rc == 0 and not again["changed"] and again["changes"] == [], again


def test_one_app_cannot_reach_another_or_run_programs(pg_container, names):
    a, b = names
    assert role(pg_container, a, a, PW_A)[0] == 0
    assert role(pg_container, b, b, PW_B)[0] == 0
    as_role(pg_container, b, PW_B, b, "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b only')")
    rc, out = as_role(pg_container, a, PW_A, b, "SELECT * FROM secrets")
    assert rc != 0 and "permission denied for database" in out, out
    rc, out = as_role(pg_container, a, PW_A, "postgres", "SELECT 1")
    assert rc != 0 and "permission denied for database" in out, out
    rc, out = as_role(pg_container, a, PW_A, a, "COPY (SELECT 1) TO PROGRAM 'id > /tmp/pwned'")
    assert rc != 0 and "must be superuser or have privileges of the pg_execute_server_program role" in out, out
    assert subprocess.run(["docker", "exec", pg_container.name, "test", "-e", "/tmp/pwned"], check=False).returncode
    rc, out = as_role(pg_container, a, PW_A, a, "SELECT pg_read_file('/etc/passwd')")
    assert rc != 0 and "permission denied" in out, out
    rc, out = as_role(pg_container, a, PW_A, a, f"ALTER ROLE {b} PASSWORD 'taken-over-1234'")
    assert rc != 0, out
    rc, out = as_role(pg_container, a, PW_A, a, f"DROP DATABASE {b}")
    assert rc != 0 and "must be owner" in out, out
    assert pg_container.psql("SELECT v FROM secrets", b) == "b only"


def test_an_existing_database_is_moved_over_with_its_data(pg_container, names):
    a, _b = names
    # As the app had it: a database the superuser made, the superuser's tables.
    pg_container.psql(f"CREATE DATABASE {a}")
    pg_container.psql(
        "CREATE SCHEMA billing; CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
        "CREATE TABLE items (id serial PRIMARY KEY, n posint, m mood); INSERT INTO items (n, m) VALUES (1, 'ok');"
        "CREATE TABLE billing.invoices (id bigint GENERATED ALWAYS AS IDENTITY, total int);"
        "CREATE SEQUENCE loose_seq; CREATE VIEW v_items AS SELECT * FROM items;"
        "CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2';",
        a,
    )
    rc, out = role(pg_container, a, a, PW_A, check=True)
    assert rc == 0 and out["changed"] and out["before"]["owner"] == "postgres", out
    assert pg_container.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{a}'") == "0", "check mode changed it"
    rc, out = role(pg_container, a, a, PW_A)
    assert rc == 0 and any("object(s)" in c for c in out["changes"]), out
    owners = pg_container.psql(
        "SELECT string_agg(DISTINCT pg_get_userbyid(relowner), ',') FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'billing')",
        a,
    )
    assert owners == a, owners
    rc, got = as_role(
        pg_container, a, PW_A, a,
        "INSERT INTO items (n, m) VALUES (2, 'sad'); INSERT INTO billing.invoices (total) VALUES (5);"
        "SELECT nextval('loose_seq'); SELECT twice(21); ALTER TABLE items ADD COLUMN note text;"
        "SELECT count(*) FROM v_items",
    )  # fmt: skip
    assert rc == 0 and got.splitlines()[-1] == "2", got
    assert not role(pg_container, a, a, PW_A)[1]["changed"]


def test_a_superuser_role_is_demoted_and_a_new_password_set(pg_container, names):
    a, _b = names
    pg_container.psql(f"CREATE ROLE {a} SUPERUSER CREATEROLE LOGIN PASSWORD 'old-password-1234'")
    rc, out = role(pg_container, a, a, PW_A)
    assert rc == 0, out
    assert any("SUPER" in c for c in out["changes"]) and f"set the password of role {a}" in out["changes"], out
    assert pg_container.psql(f"SELECT rolsuper::text || rolcreaterole::text FROM pg_roles WHERE rolname = '{a}'") == (
        "falsefalse"
    )
    assert as_role(pg_container, a, "old-password-1234", a, "SELECT 1")[0] != 0
    assert as_role(pg_container, a, PW_A, a, "SELECT 1")[0] == 0


def test_a_short_password_is_refused_before_anything(pg_container, names):
    a, _b = names
    rc, out = role(pg_container, a, a, "short")
    assert rc != 0 and "12 characters" in out["msg"] and "Nothing was changed" in out["msg"]
    assert pg_container.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{a}'") == "0"


def test_the_password_can_come_from_a_file_on_the_server(pg_container, names, tmp_path):
    a, _b = names
    path = tmp_path / "a.password"
    path.write_text(PW_A + "\n")
    rc, out = role(pg_container, a, a, None, password_file=str(path))
    assert rc == 0 and out["changed"], out
    assert as_role(pg_container, a, PW_A, a, "SELECT 1")[0] == 0
    rc, out = role(pg_container, a, a, None, password_file=str(tmp_path / "missing"))
    assert rc != 0 and "cannot read the password of role" in out["msg"]


def test_a_monitoring_role_reads_statistics_and_no_data(pg_container, names):
    a, mon = names
    assert role(pg_container, a, a, PW_A)[0] == 0
    assert as_role(pg_container, a, PW_A, a, "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('x')")[0] == 0
    args = dict(owns_database=False, member_of=["pg_monitor"])
    rc, out = role(pg_container, mon, a, PW_B, **args)
    assert rc == 0 and out["changed"], out
    assert out["changes"] == [
        f"create login role {mon}",
        f"grant pg_monitor to {mon}",
        f"grant CONNECT on {a} to {mon}",
    ]
    # Statistics of every database, as postgres_exporter reads them ...
    rc, got = as_role(pg_container, mon, PW_B, a, "SELECT count(*) > 0 FROM pg_stat_database")
    assert rc == 0 and got == "t", got
    # ... but not the app's rows, nor ownership of anything.
    rc, got = as_role(pg_container, mon, PW_B, a, "SELECT * FROM secrets")
    assert rc != 0 and "permission denied" in got, got
    assert pg_container.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{a}'") == a
    rc, out = role(pg_container, mon, a, PW_B, **args)
    assert rc == 0 and not out["changed"], out
    rc, out = role(pg_container, mon, f"{a}_missing", PW_B, **args)
    assert rc != 0 and "does not exist" in out["msg"] and "Nothing was changed" in out["msg"]
