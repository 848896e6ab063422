"""Apps isolated from each other (issue 23, item 3; R62), on the server the
production inventory made: each app reaches only the data it declares, with
credentials of its own, and no app's containers reach another's.

The clients run as the apps do: a container on the app's network, started
with the app's own env file (the DATABASE_URL and REDIS_URL site.yml built)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from urllib.parse import quote

import pytest
import yaml

PG_IMAGE, REDIS_IMAGE = "local/postgres:15", "local/redis:7"


def as_app(target, app, image, script):
    """SCRIPT (sh) in a throwaway container on APP's network with APP's env file: (rc, output)."""
    cmd = (
        f"docker run --rm --network onebox_{app} --env-file /etc/onebox/{app}/app.env --entrypoint sh {image} "
        f"-c {shlex.quote(script)}"
    )
    out = target.run(cmd)
    return out.rc, (out.stdout + out.stderr).strip()


def env_of(target, app):
    text = target.check_output(f"cat /etc/onebox/{app}/app.env")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_each_app_has_credentials_of_its_own(target):
    envs = {app: env_of(target, app) for app in ("shop", "blog", "landing", "mailer", "scheduler")}
    assert envs["shop"]["DATABASE_URL"].startswith("postgres://shop:") and envs["shop"]["DATABASE_URL"].endswith(
        "@postgres:5432/shop"
    )
    assert (
        envs["blog"]["DATABASE_URL"].startswith("postgres://blog:")
        and "@postgres:5432/blog" in envs["blog"]["DATABASE_URL"]
    )
    # The shop's workers share its database role (one role per database) and
    # its Redis, each with a Redis user and password of its own.
    assert envs["mailer"]["DATABASE_URL"] == envs["shop"]["DATABASE_URL"]
    redis_users = {app: envs[app]["REDIS_URL"].split("//")[1].split(":")[0] for app in ("shop", "mailer", "scheduler")}
    assert redis_users == {"shop": "shop", "mailer": "mailer", "scheduler": "scheduler"}
    assert len({envs[a]["REDIS_URL"] for a in redis_users}) == 3
    assert "DATABASE_URL" not in envs["landing"] and "REDIS_URL" not in envs["landing"]
    assert "DATABASE_URL" not in envs["scheduler"] and "REDIS_URL" not in envs["blog"]
    # No app holds the superuser's password.
    superuser = target.check_output("sed -n 's/^POSTGRES_PASSWORD=//p' /etc/onebox/app/postgres.env")
    assert superuser and not any(superuser in v for e in envs.values() for v in e.values())
    for path in ("/etc/onebox/postgres/shop.password", "/etc/onebox/postgres/blog.password",
                 "/etc/onebox/shop/redis.password", "/etc/onebox/mailer/redis.password"):  # fmt: skip
        f = target.file(path)
        assert f.user == "root" and f.mode == 0o600, path


def vault_secrets():
    """The scenario's vault.yml, as ansible-vault opens it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    vault = os.path.join(here, "host_vars", "onebox-platform-target", "vault.yml")
    tool = os.path.join(os.path.dirname(sys.executable), "ansible-vault")
    argv = [tool, "view", "--vault-password-file", os.path.join(here, "vault-password"), vault]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


def test_passwords_from_vault_are_the_ones_the_apps_log_in_with(target):
    """The inventory gives the blog's database role and the scheduler's Redis
    user their passwords from Vault (characters a URL must escape in both);
    the shop's are generated on the server."""
    secrets = vault_secrets()
    blog, scheduler = secrets["vault_blog_database_password"], secrets["vault_scheduler_redis_password"]
    assert target.check_output("cat /etc/onebox/postgres/blog.password") == blog
    assert target.check_output("cat /etc/onebox/scheduler/redis.password") == scheduler
    assert f":{quote(blog, safe='')}@" in env_of(target, "blog")["DATABASE_URL"]
    assert f":{quote(scheduler, safe='')}@" in env_of(target, "scheduler")["REDIS_URL"]
    rc, out = as_app(target, "blog", PG_IMAGE, 'psql "$DATABASE_URL" -XAtc "SELECT current_user"')
    assert rc == 0 and out.splitlines()[-1] == "blog", out
    rc, out = as_app(target, "scheduler", REDIS_IMAGE, 'redis-cli -u "$REDIS_URL" --no-auth-warning LPUSH shop:queue x')
    assert rc == 0 and out.splitlines()[-1].isdigit(), out
    shop = target.check_output("cat /etc/onebox/postgres/shop.password")
    assert len(shop) >= 24 and shop not in secrets.values()


def test_the_shops_role_owns_its_database_and_nothing_else(target):
    rc, out = as_app(target, "shop", PG_IMAGE,
                     'psql "$DATABASE_URL" -XAtc "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb '
                     'FROM pg_roles WHERE rolname = current_user"')  # fmt: skip
    assert rc == 0 and out.splitlines()[-1] == "shop|f|f|f", out
    # Not the superuser's database, nor any other: CONNECT is not PUBLIC's.
    for db in ("postgres", "app", "template1"):
        rc, out = as_app(target, "shop", PG_IMAGE, f'psql "${{DATABASE_URL%/shop}}/{db}" -XAtc "SELECT 1"')
        assert rc != 0 and "permission denied for database" in out, (db, out)
    # No COPY ... TO PROGRAM: it would run commands in the database container.
    rc, out = as_app(
        target, "shop", PG_IMAGE, """psql "$DATABASE_URL" -Xc "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'" """
    )
    assert rc != 0 and "pg_execute_server_program" in out, out
    assert target.run("docker exec app-postgres test -e /tmp/pwned").rc != 0
    rc, out = as_app(target, "shop", PG_IMAGE, """psql "$DATABASE_URL" -Xc "ALTER ROLE shop SUPERUSER" """)
    assert rc != 0 and "must be superuser" in out, out


def test_the_superuser_cannot_log_in_over_the_network(target):
    """Even with its password (which apps held before they had roles of their
    own), the superuser gets in over the local socket only."""
    superuser = target.check_output("sed -n 's/^POSTGRES_PASSWORD=//p' /etc/onebox/app/postgres.env")
    script = f'PGPASSWORD={shlex.quote(superuser)} psql -h postgres -U postgres -d postgres -XAtc "SELECT 1"'
    rc, out = as_app(target, "shop", PG_IMAGE, script)
    assert rc != 0 and "pg_hba.conf rejects connection for host" in out and 'user "postgres"' in out, out
    # The same in the blog's own PostgreSQL; over the socket (docker exec) it still works.
    rc, out = as_app(target, "blog", PG_IMAGE, 'psql -h postgres -U postgres -d postgres -w -XAtc "SELECT 1"')
    assert rc != 0 and "pg_hba.conf rejects connection" in out, out
    for container in ("app-postgres", "blog-postgres"):
        assert target.check_output(f"docker exec {container} psql -U postgres -XAtc 'SELECT 1'") == "1"


def test_one_app_cannot_reach_another_apps_database(target):
    # The blog's database is in a PostgreSQL of its own, on the blog's network only.
    rc, out = as_app(target, "shop", PG_IMAGE, "getent hosts blog-postgres || echo unresolved")
    assert out.endswith("unresolved"), out
    blog_pg = json.loads(target.check_output("docker inspect blog-postgres"))[0]["NetworkSettings"]["Networks"]
    blog_ip = blog_pg["onebox_blog"]["IPAddress"]
    rc, out = as_app(target, "shop", PG_IMAGE, f"pg_isready -h {blog_ip} -t 3")
    assert rc != 0 and "no response" in out, out
    # With the blog's own credentials but from the shop's network: its host
    # `postgres` is the shared one, where the blog has no role.
    blog_url = env_of(target, "blog")["DATABASE_URL"]
    rc, out = as_app(target, "shop", PG_IMAGE, f"psql {shlex.quote(blog_url)} -XAtc 'SELECT 1'")
    assert rc != 0 and ("password authentication failed" in out or "does not exist" in out), out
    # An app with no database has no way to one.
    rc, out = as_app(target, "landing", PG_IMAGE, "getent hosts postgres || echo unresolved")
    assert out.endswith("unresolved"), out


def test_redis_lets_in_only_the_users_of_its_apps(target):
    rc, out = as_app(
        target, "shop", REDIS_IMAGE, 'redis-cli -u "$REDIS_URL" --no-auth-warning SET shop:cart:1 three-items'
    )
    assert rc == 0 and out.endswith("OK"), out
    # The mailer shares the shop's Redis by declaration (redis: shop): its own user reads the queue.
    rc, out = as_app(target, "mailer", REDIS_IMAGE, 'redis-cli -u "$REDIS_URL" --no-auth-warning GET shop:cart:1')
    assert rc == 0 and out.endswith("three-items"), out
    # ... but neither it nor the owner reconfigures Redis (CONFIG writes files in
    # the container) or changes another user's password (ACL).
    for app in ("mailer", "shop"):
        for command in (
            "CONFIG SET dir /tmp",
            "ACL SETUSER shop nopass",
            "ACL LIST",
            "MODULE LIST",
            "REPLICAOF NO ONE",
        ):
            rc, out = as_app(target, app, REDIS_IMAGE, f'redis-cli -u "$REDIS_URL" --no-auth-warning {command}')
            assert "NOPERM" in out, (app, command, out)
    # Nobody without a password: the default user is off.
    for script in (
        "redis-cli -h redis GET shop:cart:1",
        "redis-cli -h redis --user shop --pass wrong --no-auth-warning GET x",
    ):
        rc, out = as_app(target, "shop", REDIS_IMAGE, script)
        assert "NOAUTH" in out or "WRONGPASS" in out, (script, out)
    rc, out = as_app(
        target,
        "shop",
        REDIS_IMAGE,
        "redis-cli -h redis --user onebox-health --pass x --no-auth-warning GET shop:cart:1",
    )
    assert "NOPERM" in out, out
    # Apps that did not ask for it cannot even resolve it.
    for app in ("blog", "landing"):
        rc, out = as_app(target, app, REDIS_IMAGE, "getent hosts redis || echo unresolved")
        assert out.endswith("unresolved"), (app, out)


def running(target, app):
    """The app's containers that run (its live colour, and any other)."""
    names = target.check_output("docker ps --format '{{.Names}}'").split()
    return [n for n in names if n in (f"{app}-blue", f"{app}-green")]


def addresses(target, name):
    nets = json.loads(target.check_output(f"docker inspect {name}"))[0]["NetworkSettings"]["Networks"]
    return [n["IPAddress"] for n in nets.values()]


def probe(target, container, ip, port=8080):
    """GET /health from inside CONTAINER to IP:PORT (busybox nc, 3 s at most;
    its wget crashes with a timeout option): what came back, '' for nothing."""
    request = "printf 'GET /health HTTP/1.0\\r\\n\\r\\n'"
    out = target.run(f'docker exec {container} sh -c "{request} | nc -w 3 {ip} {port}"')
    return out.stdout + out.stderr


@pytest.mark.parametrize("source,dest", [("shop", "blog"), ("blog", "landing"), ("landing", "shop")])
def test_no_app_reaches_another_apps_containers(target, source, dest):
    live = running(target, source)[0]
    # Its own answers (so the probe can tell reachable from not) ...
    own = probe(target, live, "127.0.0.1")
    assert '"status": "ok"' in own, own
    # ... the other app's, at every address it has, does not.
    for name in running(target, dest):
        for ip in addresses(target, name):
            got = probe(target, live, ip)
            assert '"status"' not in got and "HTTP/1" not in got, f"{live} reached {name} at {ip}: {got}"
    if dest == "shop":
        for ip in addresses(target, "shop-redis"):
            got = target.run(f"docker exec {live} sh -c 'echo PING | nc -w 3 {ip} 6379'")
            assert "NOAUTH" not in got.stdout and "PONG" not in got.stdout, got.stdout
