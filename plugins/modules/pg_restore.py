#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_restore
short_description: Restore a pg_backup backup, checksum first, stopping at the first error
version_added: "0.1.0"
description:
  - Restores a backup written by M(onebox.platform.pg_backup), chosen by O(path) or the newest
    verified one in O(backup_dir), into O(target_db) (by default the database it came from).
  - The SHA-256 checksum is checked before anything is touched, and a damaged backup is never restored.
  - Restoring over a live database (one with tables or other connections) is refused unless
    O(confirm_overwrite=true). Restoring into a new scratch database needs O(create=true).
  - Custom and directory backups go through C(pg_restore --exit-on-error), in one transaction
    unless O(jobs) > 1, with C(--clean --if-exists) when the target already existed (O(clean)), so
    objects in the backup are dropped and recreated, objects that are not in it are left alone.
    Plain backups go through C(psql -v ON_ERROR_STOP=1 --single-transaction); they were dumped with
    C(--clean --if-exists).
  - With O(container) the tools run inside the database container.
author:
  - onebox.platform developers (@onebox)
options:
  path:
    description: The backup to restore. Exactly one of O(path) and O(backup_dir) is required.
    type: path
  backup_dir:
    description:
      - Restore the newest verified backup of O(dbname) found here, by the time each recorded when it was completed.
      - A backup dated more than 5 minutes ahead of the clock (the clock was ahead, or a file copied in) is never
        picked; a warning names it. Restore it by O(path) if it is the one you want.
    type: path
  dbname:
    description: Database the backup was taken from (to find it in O(backup_dir)); the default O(target_db).
    type: str
  name_prefix:
    description: Prefix the backup names have (as given to pg_backup).
    type: str
    default: ""
  target_db:
    description: Database to restore into. Defaults to O(dbname).
    type: str
  create:
    description: Create O(target_db) when it does not exist.
    type: bool
    default: false
  confirm_overwrite:
    description: Allow restoring over a live database. Stop or drain the app first.
    type: bool
    default: false
  clean:
    description: Drop objects before recreating them when the target already exists.
    type: bool
    default: true
  single_transaction:
    description: All or nothing. Ignored with O(jobs) > 1.
    type: bool
    default: true
  jobs:
    description: Parallel restore jobs (directory backups, or custom ones restored on this host).
    type: int
    default: 1
  no_owner:
    description: Skip ownership and privileges (restore as the connecting role).
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for a backup running in the same directory (a scheduled one takes seconds to minutes).
    type: float
    default: 600
extends_documentation_fragment:
  - onebox.platform.attributes.check_only
  - onebox.platform.postgres
notes:
  - Check mode verifies the checksum and the target and reports what would be restored.
seealso:
  - module: onebox.platform.pg_backup
"""

EXAMPLES = r"""
- name: Restore the latest backup into a scratch database to test it
  onebox.platform.pg_restore:
    container: postgres
    backup_dir: /var/backups/postgres
    dbname: app
    target_db: app_restore_check
    create: true

- name: Put the pre-deploy backup back into the live database (app stopped first)
  onebox.platform.pg_restore:
    container: postgres
    path: /var/backups/postgres/app-20261123T101500Z.dump
    dbname: app
    confirm_overwrite: true
"""

RETURN = r"""
path:
  description: The backup restored.
  returned: success
  type: str
target_db:
  description: The database restored into.
  returned: success
  type: str
format:
  description: custom, directory or plain.
  returned: success
  type: str
sha256:
  description: Checksum that was verified.
  returned: success
  type: str
created:
  description: Whether the target database was created.
  returned: success
  type: bool
tables:
  description: Tables in the target after the restore.
  returned: success, not in check mode
  type: int
duration:
  description: Seconds the restore took.
  returned: success
  type: float
live:
  description: Whether the target was live (had tables or connections) before.
  returned: success
  type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import (
    BACKUP_ARGS,
    CONNECTION_ARGS,
    BackupError,
    Restore,
    latest_backup,
    runner_from_params,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **CONNECTION_ARGS,
            path=dict(type="path"),
            backup_dir=dict(type="path"),
            dbname=dict(type="str"),
            name_prefix=dict(type="str", default=""),
            target_db=dict(type="str"),
            create=dict(type="bool", default=False),
            confirm_overwrite=dict(type="bool", default=False),
            clean=dict(type="bool", default=True),
            single_transaction=dict(type="bool", default=True),
            jobs=dict(type="int", default=1),
            no_owner=dict(type="bool", default=False),
            lock_timeout=BACKUP_ARGS["lock_timeout"],
        ),
        required_one_of=[("path", "backup_dir")],
        mutually_exclusive=[("path", "backup_dir")],
        required_by={"backup_dir": "dbname"},
        supports_check_mode=True,
    )
    p = module.params
    target = p["target_db"] or p["dbname"]
    if not target:
        module.fail_json(msg="set target_db (or dbname) to say which database to restore into")
    runner = runner_from_params(p)
    t0 = time.monotonic()
    try:
        path = p["path"] or latest_backup(p["backup_dir"], p["name_prefix"], p["dbname"], warn=module.warn)
        restore = Restore(
            runner,
            path,
            target,
            create=p["create"],
            confirm_overwrite=p["confirm_overwrite"],
            clean=p["clean"],
            single_transaction=p["single_transaction"],
            jobs=p["jobs"],
            no_owner=p["no_owner"],
            lock_dir=p["backup_dir"],
            lock_timeout=p["lock_timeout"],
        )
        if module.check_mode:
            facts = restore.check()
            module.exit_json(
                changed=True,
                path=path,
                target_db=target,
                format=facts["format"],
                sha256=facts["sha256"],
                live=facts["live"],
                created=not facts["target"]["exists"],
                duration=round(time.monotonic() - t0, 3),
            )
        out = restore.run()
        out.pop("target", None)
        module.exit_json(changed=True, **out)
    except BackupError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
