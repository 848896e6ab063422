#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Take a verified PostgreSQL backup and apply retention
version_added: "0.1.0"
description:
  - Runs C(pg_dump) on this host (over TCP or a socket) or inside a Docker container
    (O(container), so pg_dump matches the server's version), never with a TTY.
  - The dump is written under a hidden temporary name, read back in full (C(pg_restore -f /dev/null),
    or a complete gzip decode and pg_dump's closing line for plain SQL), fsynced and only then renamed
    to C({name_prefix}{dbname}-{YYYYmmddTHHMMSSZ}.{dump|dir|sql.gz|sql}), with a sha256sum-format
    C(.sha256) file beside it. Files are mode 0600, directories 0700.
  - A failed or unverifiable dump leaves no file behind and prunes nothing. C(pg_restore --list)
    alone is not trusted, because it reads only the table of contents and passes on a file cut in
    its data section.
  - A lock file in O(backup_dir) makes runs wait for each other (a timer and a manual run never
    overlap). Partial files left by a killed run are removed under that lock.
  - Retention runs only after a good dump. It keeps the O(keep_last) newest backups and the newest
    backup of each of the last O(keep_hourly) hours, O(keep_daily) days, O(keep_weekly) ISO weeks and
    O(keep_monthly) months; it never removes the newest backup and only touches files of its own
    naming pattern that have a checksum. With every keep option at 0 nothing is pruned.
  - Backups are ordered by the time each recorded when it was completed (the first line of its C(.sha256), a
    comment to C(sha256sum -c)), or by the time in its name when it recorded none. A backup dated more than
    5 minutes ahead of the clock (the clock was ahead, or a file copied in) never counts as the newest; retention
    keeps it without counting it, M(onebox.platform.pg_restore) does not pick it, and a warning names it
    (RV(future)).
  - The password reaches pg_dump in the environment (C(PGPASSWORD)), never on a command line.
author:
  - onebox.platform developers (@onebox)
options:
  backup_dir:
    description: Directory for the backups. It must exist.
    type: path
    required: true
  dbname:
    description: Database to back up.
    type: str
    required: true
  format:
    description:
      - V(custom) (one compressed file, selective restore), V(directory) (parallel dump with O(jobs))
        or V(plain) (SQL, compressed by the module).
    type: str
    choices: [custom, directory, plain]
    default: custom
  compression:
    description:
      - V(gzip) works everywhere.
      - V(zstd) and V(lz4) with O(format=plain) are done by the C(zstd) or C(lz4) command on the
        server, beside pg_dump and whatever its version (zstd uses a thread per core); with
        O(format=custom) or O(format=directory) pg_dump does it and must be version 16 or newer.
    type: str
    choices: [gzip, zstd, lz4, none]
    default: gzip
  compression_level:
    description: Compression level (tool default when unset).
    type: int
  jobs:
    description: Parallel jobs; needs O(format=directory).
    type: int
    default: 1
  globals:
    description: Also save roles and tablespaces (C(pg_dumpall --globals-only)) as C(<backup>.globals.sql).
    type: bool
    default: false
  extra_args:
    description: Extra pg_dump arguments (for example C(--exclude-table-data=audit_log)).
    type: list
    elements: str
    default: []
  name_prefix:
    description: Prefix of the backup names.
    type: str
    default: ""
  keep_last:
    description: Keep this many newest backups.
    type: int
    default: 0
  keep_hourly:
    description: Keep the newest backup of each of this many most recent hours.
    type: int
    default: 0
  keep_daily:
    description: Keep the newest backup of each of this many most recent days.
    type: int
    default: 0
  keep_weekly:
    description: Keep the newest backup of each of this many most recent ISO weeks.
    type: int
    default: 0
  keep_monthly:
    description: Keep the newest backup of each of this many most recent months.
    type: int
    default: 0
  lock_timeout:
    description:
      - Seconds to wait for another backup or restore in O(backup_dir) to finish (a deploy's backup
        that meets a scheduled one waits for it).
    type: float
    default: 600
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
  - onebox.platform.postgres
notes:
  - Check mode reports the name it would write and the backups it would prune.
  - Dump-based backups lose up to one interval of data; for less, use WAL archiving.
seealso:
  - module: onebox.platform.pg_restore
"""

EXAMPLES = r"""
- name: Back up the app database from its container, keep a sensible history
  onebox.platform.pg_backup:
    container: postgres
    dbname: app
    backup_dir: /var/backups/postgres
    keep_last: 8
    keep_hourly: 24
    keep_daily: 30
    keep_weekly: 8
    keep_monthly: 12

- name: Parallel directory dump over TCP
  onebox.platform.pg_backup:
    host: 127.0.0.1
    port: 5432
    user: backup
    password: "{{ vault_pg_backup_password }}"
    dbname: app
    format: directory
    jobs: 2
    backup_dir: /var/backups/postgres
  register: backup

- name: Where it went
  ansible.builtin.debug:
    msg: "{{ backup.path }} ({{ backup.bytes }} bytes, sha256 {{ backup.sha256 }})"
"""

RETURN = r"""
path:
  description: The new backup.
  returned: success
  type: str
  sample: /var/backups/postgres/app-20261123T101500Z.dump
bytes:
  description: Size of the backup in bytes (all its files, for a directory backup).
  returned: success, not in check mode
  type: int
size:
  description:
    - Size of RV(path) as Ansible reports it for any returned path. For a directory backup that is
      the directory entry, not its contents; use RV(bytes).
  returned: success, not in check mode
  type: int
sha256:
  description: SHA-256 of the file (of the manifest for a directory backup).
  returned: success, not in check mode
  type: str
duration:
  description: Seconds the whole run took (dump, verification, retention).
  returned: success
  type: float
kept:
  description: Backups kept, newest first (those dated in the future, RV(future), last).
  returned: success
  type: list
  elements: str
pruned:
  description: Backups removed (or that would be, in check mode).
  returned: success
  type: list
  elements: str
future:
  description: Backups dated more than 5 minutes ahead of the clock, kept and reported (a warning says what to do).
  returned: success
  type: list
  elements: str
completed:
  description: When the backup was completed (UTC), as its C(.sha256) records it.
  returned: success, not in check mode
  type: str
  sample: "2026-11-23T10:15:07Z"
removed_partials:
  description: Leftovers of killed runs that were removed.
  returned: success, not in check mode
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import (
    BACKUP_ARGS,
    BackupError,
    backup_from_params,
    list_backups,
)


def listing(names):
    return "".join(f"{n}\n" for n in names)


def main():
    module = AnsibleModule(argument_spec=BACKUP_ARGS, supports_check_mode=True)
    p = module.params
    t0 = time.monotonic()
    try:
        backup = backup_from_params(p)
        if module.check_mode:
            plan = backup.plan()
            if plan["warning"]:
                module.warn(plan["warning"])
            diff = dict(before=listing(plan["before"]), after=listing(plan["kept"]))
            module.exit_json(
                changed=True,
                path=plan["path"],
                kept=plan["kept"],
                pruned=plan["pruned"],
                future=plan["future"],
                duration=round(time.monotonic() - t0, 3),
                diff=diff,
            )
        before = [b["name"] for b in list_backups(p["backup_dir"], p["name_prefix"], p["dbname"]) if b["verified"]]
        out = backup.run()
        warning = out.pop("warning")
        if warning:
            module.warn(warning)
        module.exit_json(
            changed=True,
            diff=dict(before=listing(before), after=listing(out["kept"])),
            **out,
        )
    except BackupError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
