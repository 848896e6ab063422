#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_app_role
short_description: Give an app's database a login role of its own, so no app can reach another's data
version_added: "0.5.0"
description:
  - Makes O(role) a login role with no superuser, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS, with O(password),
    and the owner of database O(database) (created when missing). CONNECT is revoked from PUBLIC on that database and
    on the databases in O(revoke_public_connect), so another app's role cannot even connect to it.
  - Without superuser, the role cannot run C(COPY ... TO PROGRAM) or read server files in the database container.
  - Moving an existing database over hands every object the superuser owns in it (tables, sequences, views,
    functions, types, schemas; not those of extensions) to O(role), in one transaction. The app, which connected as
    the superuser before, keeps its tables.
  - The password is sent as a SCRAM-SHA-256 verifier computed by the module; the plaintext never reaches the server
    or a command line. A role that already has the password is left alone (checked against its verifier).
  - Runs C(psql) as the superuser in the database container (C(docker exec), over the local socket).
author:
  - onebox.platform developers (@onebox)
options:
  container:
    description: The PostgreSQL container.
    type: str
    required: true
  superuser:
    description: The superuser the container was made with (POSTGRES_USER).
    type: str
    default: postgres
  role:
    description: The app's login role.
    type: str
    required: true
  database:
    description: The app's database.
    type: str
    required: true
  password:
    description: The role's password (12 characters or more). Exactly one of O(password) and O(password_file).
    type: str
  password_file:
    description:
      - A file on the server holding the role's password (its first line), such as the one the postgres role keeps.
        The password then never passes through Ansible's variables.
    type: path
  revoke_public_connect:
    description: Other databases of the server PUBLIC must not connect to (the app roles would see the catalog there).
    type: list
    elements: str
    default: [postgres, template1]
  owns_database:
    description:
      - V(false) makes a role that only connects to O(database), an existing database it is granted CONNECT on
        (the monitoring role), instead of its owner; nothing in the database changes hands.
    type: bool
    default: true
  member_of:
    description: Roles granted to O(role), such as V(pg_monitor) for postgres_exporter. Others it has are left alone.
    type: list
    elements: str
    default: []
  docker_bin:
    description: The docker command.
    type: str
    default: docker
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
notes:
  - Check mode reads the role and database and returns what would change.
seealso:
  - module: onebox.platform.pg_backup
"""

EXAMPLES = r"""
- name: The shop's own role, owner of its database only
  onebox.platform.pg_app_role:
    container: app-postgres
    role: shop
    database: shop
    password_file: /etc/onebox/postgres/shop.password

- name: postgres_exporter's role, which reads statistics and nothing else
  onebox.platform.pg_app_role:
    container: app-postgres
    role: onebox_monitor
    database: app
    owns_database: false
    member_of: [pg_monitor]
    password_file: /etc/onebox/postgres/onebox_monitor.password
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) changed, in words.
  returned: always
  type: list
  elements: str
  sample: ["create login role shop", "give database shop to shop (was postgres)"]
before:
  description: The role's flags (no password), the database's owner and where PUBLIC could connect, before.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.pg_access import AccessError, AppRole, public_view
from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import PgRunner


def main():
    module = AnsibleModule(
        argument_spec=dict(
            container=dict(type="str", required=True),
            superuser=dict(type="str", default="postgres"),
            role=dict(type="str", required=True),
            database=dict(type="str", required=True),
            password=dict(type="str", no_log=True),
            password_file=dict(type="path", no_log=False),
            revoke_public_connect=dict(type="list", elements="str", default=["postgres", "template1"]),
            owns_database=dict(type="bool", default=True),
            member_of=dict(type="list", elements="str", default=[]),
            docker_bin=dict(type="str", default="docker"),
        ),
        required_one_of=[("password", "password_file")],
        mutually_exclusive=[("password", "password_file")],
        supports_check_mode=True,
    )
    p = module.params
    password = p["password"]
    if p["password_file"]:
        try:
            with open(p["password_file"], encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
        except OSError as exc:
            module.fail_json(
                msg=f"pg_app_role: cannot read the password of role {p['role']}: {exc}. Nothing was changed."
            )
    runner = PgRunner(user=p["superuser"], container=p["container"], docker=p["docker_bin"])
    try:
        app = AppRole(
            runner,
            p["role"],
            p["database"],
            password,
            p["superuser"],
            p["revoke_public_connect"],
            owns_database=p["owns_database"],
            member_of=p["member_of"],
        )
        if module.check_mode:
            facts, _server, _in_db, said = app.plan()
        else:
            said, facts = app.apply()
    except AccessError as exc:
        module.fail_json(msg=f"pg_app_role: {exc}")
    before = public_view(facts)
    result = dict(changed=bool(said), changes=said, before=before)
    if module._diff:
        result["diff"] = {"before": {"changes": []}, "after": {"changes": said}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
