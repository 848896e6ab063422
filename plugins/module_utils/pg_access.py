# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An app's own way into PostgreSQL: one login role per database, owner of
that database only (no superuser, no CREATEROLE, no CREATEDB), CONNECT
revoked from PUBLIC, so one app can neither read another's data nor run
``COPY ... TO PROGRAM`` in the database container.

The password is set as a SCRAM-SHA-256 verifier computed here: the
plaintext never reaches the server, its logs or a command line. Whether a
role already has the password is decided by checking its stored verifier
(RFC 5802/7677), so a run that changes nothing says so. Standard library
only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from .pg_backup import BackupError, quote_ident, quote_literal

SCRAM = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")
SCRAM_ITERATIONS = 4096
# What the role must not have (pg_roles column: how ALTER ROLE says it off).
MUST_BE_OFF = {
    "rolsuper": "NOSUPERUSER",
    "rolcreaterole": "NOCREATEROLE",
    "rolcreatedb": "NOCREATEDB",
    "rolreplication": "NOREPLICATION",
    "rolbypassrls": "NOBYPASSRLS",
}


class AccessError(Exception):
    """The role or database could not be made as asked; the message says why."""


def _keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client).digest(), server


def scram_verifier(password, salt=None, iterations=SCRAM_ITERATIONS):
    """The verifier PostgreSQL stores for PASSWORD (as ``password_encryption =
    scram-sha-256`` would make it), which ALTER ROLE ... PASSWORD accepts as is."""
    salt = os.urandom(16) if salt is None else salt
    stored, server = _keys(password, salt, iterations)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def scram_matches(verifier, password):
    """Whether VERIFIER (pg_authid.rolpassword) is one of PASSWORD."""
    m = SCRAM.match(verifier or "")
    if not m:
        return False
    iterations, salt, stored, server = m.groups()
    got_stored, got_server = _keys(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(got_stored, base64.b64decode(stored)) and hmac.compare_digest(
        got_server, base64.b64decode(server)
    )


# One row: the role's flags and verifier, the database's owner and whether
# PUBLIC may connect to it ('' when the role or database does not exist).
FACTS_SQL = """
SELECT coalesce((SELECT concat_ws('|', rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls,
                                  rolcanlogin, coalesce(rolpassword, ''))
                 FROM pg_authid WHERE rolname = {role}), '')
       || '#' ||
       coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {db}), '')
       || '#' ||
       coalesce((SELECT string_agg(DISTINCT d.datname, ',')
                 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                 WHERE d.datname IN ({public_dbs}) AND a.grantee = 0 AND a.privilege_type = 'CONNECT'), '')
       || '#' ||
       coalesce((SELECT string_agg(g.rolname, ',' ORDER BY g.rolname)
                 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                 WHERE u.rolname = {role}), '')
       || '#' ||
       coalesce((SELECT 't' FROM pg_database d, aclexplode(d.datacl) a
                 WHERE d.datname = {db} AND a.privilege_type = 'CONNECT'
                   AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = {role})), 'f')
"""

# Objects in the app's database still owned by the superuser (made before
# the app had a role of its own): what moving it over hands to the role.
# Objects of extensions are left to their extension.
OWNED_SQL = """
SELECT count(*) FROM (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = {superuser})
     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))
  UNION ALL
  SELECT n.oid FROM pg_namespace n
   WHERE n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = {superuser})
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname NOT LIKE 'pg_%'
  UNION ALL
  SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = {superuser})
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE t.typowner = (SELECT oid FROM pg_roles WHERE rolname = {superuser})
     AND (t.typtype IN ('e', 'd', 'r')
          OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
) o
"""

# Hands every such object to the role, in one transaction.
REASSIGN_SQL = """
DO $onebox$
DECLARE
  su oid := (SELECT oid FROM pg_roles WHERE rolname = {superuser});
  r record;
BEGIN
  FOR r IN SELECT n.nspname FROM pg_namespace n
            WHERE n.nspowner = su AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
              AND n.nspname NOT LIKE 'pg_%' LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, {role});
  END LOOP;
  FOR r IN SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relowner = su AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))
            ORDER BY c.relkind = 'S' LOOP
    EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                   CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                  WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                   r.nspname, r.relname, {role});
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS proc, p.prokind FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.proowner = su AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I',
                   CASE r.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
                   r.proc, {role});
  END LOOP;
  FOR r IN SELECT t.oid::regtype AS typ FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE t.typowner = su AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND (t.typtype IN ('e', 'd', 'r')
                   OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e') LOOP
    EXECUTE format('ALTER TYPE %s OWNER TO %I', r.typ, {role});
  END LOOP;
  EXECUTE format('ALTER SCHEMA public OWNER TO %I', {role});
END
$onebox$;
"""


def parse_facts(line):
    """FACTS_SQL's row as a dict: role (None when missing: else its flags and
    verifier), owner of the database ('' when missing), the databases PUBLIC
    may still connect to, the roles it is a member of, and whether it was
    granted CONNECT on the database itself."""
    role, owner, public, member_of, connect = (line.strip().split("#", 4) + ["", "", "", "f"])[:5]
    out = {
        "role": None,
        "owner": owner,
        "public_connect": sorted(x for x in public.split(",") if x),
        "member_of": sorted(x for x in member_of.split(",") if x),
        "connect": connect == "t",
    }
    if role:
        flags = role.split("|", 6)
        names = [*MUST_BE_OFF, "rolcanlogin"]
        out["role"] = {name: flags[i] == "t" for i, name in enumerate(names)}
        out["role"]["verifier"] = flags[6] if len(flags) > 6 else ""
    return out


def revoke_public(databases, server, said):
    """CONNECT taken from PUBLIC on each of DATABASES (the other app
    databases still open to every role), appended to SERVER and SAID."""
    for other in sorted(set(databases)):
        server.append(f"REVOKE CONNECT ON DATABASE {quote_ident(other)} FROM PUBLIC")
        said.append(f"revoke CONNECT on {other} from PUBLIC")


def plan(facts, role, db, password, superuser, public_dbs, owned=0, salt=None, owns_database=True, member_of=()):
    """The SQL that makes FACTS what is wanted, as (statements for the
    postgres database, statements for the app's database, what changes, in
    words). Empty when nothing is to change. The password goes in as a
    verifier (SALT: for tests). OWNS_DATABASE false: a role that only
    connects to DB (an existing database, CONNECT granted), such as the
    monitoring role; MEMBER_OF: the roles granted to it (pg_monitor)."""
    r, d = quote_ident(role), quote_ident(db)
    server, in_db, said = [], [], []
    verifier = None
    if facts["role"] is None:
        verifier = scram_verifier(password, salt)
        flags = " ".join(MUST_BE_OFF.values())
        server.append(f"CREATE ROLE {r} WITH LOGIN {flags} PASSWORD {quote_literal(verifier)}")
        said.append(f"create login role {role}")
    else:
        on = [col for col in MUST_BE_OFF if facts["role"][col]]
        if on or not facts["role"]["rolcanlogin"]:
            server.append(f"ALTER ROLE {r} WITH LOGIN {' '.join(MUST_BE_OFF[c] for c in MUST_BE_OFF)}")
            taken = [MUST_BE_OFF[c][2:] for c in on]
            if not facts["role"]["rolcanlogin"]:
                taken.append("the NOLOGIN")
            said.append(f"take {', '.join(taken)} from role {role}")
        if not scram_matches(facts["role"]["verifier"], password):
            verifier = scram_verifier(password, salt)
            server.append(f"ALTER ROLE {r} WITH PASSWORD {quote_literal(verifier)}")
            said.append(f"set the password of role {role}")
    for other in sorted(set(member_of) - set(facts.get("member_of") or [])):
        server.append(f"GRANT {quote_ident(other)} TO {r}")
        said.append(f"grant {other} to {role}")
    if not owns_database:
        if not facts["owner"]:
            raise AccessError(
                f"database {db} does not exist, so role {role} cannot connect to it. Nothing was changed."
            )
        if not facts.get("connect"):
            server.append(f"GRANT CONNECT ON DATABASE {d} TO {r}")
            said.append(f"grant CONNECT on {db} to {role}")
        revoke_public([x for x in facts["public_connect"] if x in public_dbs], server, said)
        return server, in_db, said
    if not facts["owner"]:
        server.append(f"CREATE DATABASE {d} OWNER {r}")
        said.append(f"create database {db} owned by {role}")
    elif facts["owner"] != role:
        server.append(f"ALTER DATABASE {d} OWNER TO {r}")
        said.append(f"give database {db} to {role} (was {facts['owner']})")
    public = [x for x in facts["public_connect"] if x in public_dbs or x == db]
    if not facts["owner"] or db in public:
        server.append(f"REVOKE CONNECT, TEMPORARY ON DATABASE {d} FROM PUBLIC")
        said.append(f"revoke CONNECT on {db} from PUBLIC")
    revoke_public(set(public) - {db}, server, said)
    if owned or (facts["owner"] and facts["owner"] != role):
        in_db.append(REASSIGN_SQL.format(superuser=quote_literal(superuser), role=quote_literal(role)))
        said.append(f"hand {owned} object(s) in {db} owned by {superuser} to {role}")
    return server, in_db, said


class AppRole:
    """Makes the login role of one app database with RUNNER (a pg_backup
    PgRunner connected as the superuser, in the database container)."""

    def __init__(
        self,
        runner,
        role,
        db,
        password,
        superuser="postgres",
        public_dbs=("postgres", "template1"),
        owns_database=True,
        member_of=(),
    ):
        if not password or len(password) < 12:
            raise AccessError(f"the password of role {role} must be 12 characters or more. Nothing was changed.")
        self.runner, self.role, self.db, self.password = runner, role, db, password
        self.superuser, self.public_dbs = superuser, tuple(public_dbs)
        self.owns_database, self.member_of = owns_database, tuple(member_of)

    def _sql(self, sql, dbname="postgres", transaction=False):
        """Run SQL (on stdin: nothing of it on a command line) as the superuser."""
        args = ["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-"]
        if transaction:
            args.insert(0, "--single-transaction")
        try:
            out = self.runner.run("psql", args, input_bytes=sql.encode("utf-8"))
        except BackupError as exc:
            raise AccessError(str(exc)) from None
        return out.decode("utf-8", "replace").strip()

    def facts(self):
        lits = ", ".join(quote_literal(x) for x in (*self.public_dbs, self.db))
        facts = parse_facts(
            self._sql(FACTS_SQL.format(role=quote_literal(self.role), db=quote_literal(self.db), public_dbs=lits))
        )
        facts["owned_by_superuser"] = 0
        if facts["owner"] and self.owns_database:
            count = self._sql(OWNED_SQL.format(superuser=quote_literal(self.superuser)), self.db)
            facts["owned_by_superuser"] = int(count or 0)
        return facts

    def plan(self, facts=None):
        facts = self.facts() if facts is None else facts
        owned = facts["owned_by_superuser"]
        return (
            facts,
            *plan(
                facts,
                self.role,
                self.db,
                self.password,
                self.superuser,
                self.public_dbs,
                owned,
                owns_database=self.owns_database,
                member_of=self.member_of,
            ),
        )

    def apply(self):
        """Make it so; returns (changes said in words, facts before)."""
        facts, server, in_db, said = self.plan()
        # CREATE DATABASE cannot run in a transaction block: one statement per run.
        for statement in server:
            self._sql(statement + ";")
        if in_db:
            self._sql("\n".join(in_db), self.db, transaction=True)
        return said, facts


def public_view(facts):
    """FACTS without the verifier, for the module's result and diff."""
    out = dict(facts)
    if out.get("role"):
        out["role"] = {k: v for k, v in out["role"].items() if k != "verifier"}
    return out
