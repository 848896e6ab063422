"""Every data command the README shows, as written, on the app model
(issue 23, items 1 and 4; R60, R63): the README's "Use it on your server"
block is read from README.md and each ansible-playbook line run in order,
with only `-i inventories/mine` pointed at this scenario's inventory (the
shipped production group_vars, see molecule.yml). site.yml's line is the
one Molecule's converge and idempotence already ran.

Then the restores that must not destroy the wrong thing: another app's
database, an existing one, the live one unconfirmed, a truncated backup."""

from __future__ import annotations

import os
import re
import shlex
import urllib.error

import pytest
from onebox_molecule import PROJECT, get_json, one_line, run_playbook

SHOP_SQL = "docker exec app-postgres psql -U postgres -X -A -t -d {db} -c {sql}"


def readme_commands():
    """The ansible-playbook lines of the README's "Use it on your server" block."""
    with open(os.path.join(PROJECT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## Use it on your server", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("ansible-playbook ")]


def run_as_written(line):
    argv = shlex.split(line)
    assert (
        argv[:2] == ["ansible-playbook", argv[1]] and "-i" in argv and argv[argv.index("-i") + 1] == "inventories/mine"
    )
    i = argv.index("-i")
    args = argv[2:i] + argv[i + 2 :]
    proc = run_playbook(os.path.join(PROJECT, argv[1]), *args, timeout=1200, ONEBOX_WHO="readme")
    return proc.returncode, one_line(proc)


def sql(target, query, db="shop"):
    return target.check_output(SHOP_SQL.format(db=db, sql=shlex.quote(query))).strip()


def test_the_readme_block_is_on_the_app_model():
    lines = readme_commands()
    playbooks = [shlex.split(line)[1] for line in lines]
    for needed in (
        "site.yml",
        "deploy.yml",
        "rollback.yml",
        "maintenance.yml",
        "backup.yml",
        "restore.yml",
        "recover.yml",
    ):
        assert f"playbooks/{needed}" in playbooks, needed
    assert not any("app_version" in line or "app_name" in line for line in lines), lines


def test_every_readme_command_runs_as_written(target, base_url):
    sql(target, "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, what text); "
                "INSERT INTO orders VALUES (1, 'kept') ON CONFLICT DO NOTHING")  # fmt: skip
    ran = []
    for line in readme_commands():
        playbook = shlex.split(line)[1]
        if playbook == "playbooks/site.yml":
            continue
        rc, out = run_as_written(line)
        ran.append(line)
        if playbook == "playbooks/recover.yml":
            # This server is alive and serves traffic: recovering over it is refused.
            assert rc != 0 and "serves traffic" in out, out[-2000:]
            continue
        assert rc == 0, f"{line}\n{out[-3000:]}"
        if playbook == "playbooks/deploy.yml":
            assert get_json(base_url, "shop.example.com")[1]["version"] == "v2"
        elif playbook == "playbooks/rollback.yml":
            assert get_json(base_url, "shop.example.com")[1]["version"] == "v1"
        elif playbook == "playbooks/maintenance.yml" and "maintenance=on" in line:
            with pytest.raises(urllib.error.HTTPError) as err:
                get_json(base_url, "shop.example.com")
            assert err.value.code == 503
        elif playbook == "playbooks/maintenance.yml":
            assert get_json(base_url, "shop.example.com")[1]["version"] == "v1"
        elif playbook == "playbooks/backup.yml" and "drill=true" in line:
            assert (
                "restore drill of /var/backups/onebox/shop/" in out
                and "restore drill of /var/backups/onebox/blog/" in out
            )
        elif playbook == "playbooks/backup.yml":
            assert "backup of shop:" in out and "backup of blog:" in out
            # Written after the backup: what the live restore below replaces
            # (and its safety copy keeps).
            sql(target, "INSERT INTO orders VALUES (2, 'after the backup')")
        elif playbook == "playbooks/restore.yml" and "restore_into_live=true" in line:
            m = re.search(r"to put it back: (ansible-playbook playbooks/restore\.yml .*?restore_confirm=true)", out)
            assert m, out[-2000:]
            undo = m.group(1)
            # The mailer shares the shop's database: locked while it was replaced.
            locked = re.search(r"TASK \[Take the deploy locks of the other apps on shop\] \**(.*?) TASK \[", out)
            assert locked and "changed: [" in locked.group(1) and "(item=mailer)" in locked.group(1), out[-3000:]
            assert sql(target, "SELECT string_agg(what, ',' ORDER BY id) FROM orders") == "kept"
        elif playbook == "playbooks/restore.yml":
            assert "into shop_restore" in out
            assert sql(target, "SELECT what FROM orders", db="shop_restore") == "kept"
            owner = sql(target, "SELECT pg_get_userbyid(datdba) || ' ' || coalesce(datacl::text, '') FROM pg_database "
                                "WHERE datname = 'shop_restore'", db="postgres")  # fmt: skip
            assert owner.startswith("shop ") and "=c" not in owner.split(" ", 1)[1].replace("shop=", ""), owner
    assert len(ran) >= 9, ran
    # The undo command the live restore printed puts back what it replaced:
    # the row written after the backup (kept in the safety copy).
    proc = run_playbook(os.path.join(PROJECT, shlex.split(undo)[1]), *shlex.split(undo)[2:], timeout=600)
    assert proc.returncode == 0, one_line(proc)[-2000:]
    assert sql(target, "SELECT string_agg(what, ',' ORDER BY id) FROM orders") == "kept,after the backup"
    # The app can still use its tables (they belong to its role).
    rc = target.run(
        "docker run --rm --network onebox_shop --env-file /etc/onebox/shop/app.env --entrypoint sh local/postgres:15 "
        '-c \'psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -Xc "INSERT INTO orders VALUES (3, current_user)"\''
    )
    assert rc.rc == 0, rc.stdout + rc.stderr
    assert sql(target, "SELECT what FROM orders WHERE id = 3") == "shop"
    audit = target.check_output("cat /var/lib/onebox/shop/audit.log")
    assert re.search(r" restore /var/backups/onebox/shop/prerestore-shop-\S+ into shop .*by=", audit), audit[-1500:]
    # The mailer shares the shop's database: locked while it was replaced (above), unlocked after.
    assert not target.file("/var/lib/onebox/mailer/deploy.lock").exists


def restore(*extra):
    proc = run_playbook("restore.yml", "-l", "production", *extra, timeout=600)
    return proc.returncode, one_line(proc)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-e", "app=shop", "-e", "restore_target=blog"], "restore_target blog is the database of blog"),
        (["-e", "app=shop", "-e", "restore_target=postgres"], "postgres already exists in app-postgres"),
        (["-e", "app=shop", "-e", "restore_target=shop"], "is the live database of shop: restoring over it needs"),
        (["-e", "app=shop", "-e", "restore_into_live=true"], "is the live database of shop: restoring over it needs"),
        (["-e", "app=landing"], "landing has no database in this inventory"),
        ([], "Several apps have a database"),
    ],
)
def test_a_restore_never_goes_where_it_must_not(target, extra, message):
    before = sql(target, "SELECT count(*) FROM orders")
    rc, out = restore(*extra)
    assert rc != 0 and message in out and "Nothing was changed" in out, out[-2000:]
    assert sql(target, "SELECT count(*) FROM orders") == before


def test_a_truncated_backup_is_refused_by_its_checksum(target):
    newest = target.check_output("ls -t /var/backups/onebox/shop/shop-*.dump | head -1")
    cut = newest.replace("/shop-", "/shop-cut-")
    rename = f"s#{os.path.basename(newest)}#{os.path.basename(cut)}#"
    target.check_output(f"cp {newest} {cut} && sed '{rename}' {newest}.sha256 > {cut}.sha256")
    target.check_output(f"truncate -s -200 {cut}")
    before = sql(target, "SELECT count(*) FROM orders")
    rc, out = restore(
        "-e", "app=shop", "-e", f"restore_backup={cut}", "-e", "restore_into_live=true", "-e", "restore_confirm=true"
    )
    assert rc != 0 and "checksum" in out.lower(), out[-2000:]
    assert sql(target, "SELECT count(*) FROM orders") == before
    target.check_output(f"rm -f {cut} {cut}.sha256")


def test_one_app_is_backed_up_and_restored_in_its_own_postgresql(target):
    """backup.yml -e app=blog backs up blog alone; restore.yml -e app=blog
    restores that dump inside blog's own PostgreSQL container, into a scratch
    copy owned by blog's role."""
    blog = "docker exec blog-postgres psql -U postgres -X -A -t -d {db} -c {sql}"

    def blog_sql(query, db="blog"):
        return target.check_output(blog.format(db=db, sql=shlex.quote(query))).strip()

    blog_sql("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, what text); "
             "INSERT INTO notes VALUES (1, 'blog kept') ON CONFLICT DO NOTHING")  # fmt: skip
    proc = run_playbook("backup.yml", "-l", "production", "-e", "app=blog", timeout=600)
    out = one_line(proc)
    assert proc.returncode == 0, out[-2000:]
    assert "backup of blog:" in out and "backup of shop:" not in out, out[-2000:]
    rc, out = restore("-e", "app=blog")
    assert rc == 0 and "into blog_restore" in out, out[-2000:]
    assert blog_sql("SELECT what FROM notes", db="blog_restore") == "blog kept"
    owner = blog_sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'blog_restore'", db="postgres")
    assert owner == "blog", owner
