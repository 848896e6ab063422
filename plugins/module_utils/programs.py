# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-server programs, in one list: where each lives, which engines of
module_utils it imports (the same files the modules run) and the command
that starts it. Every role installs its program from here in one run of
onebox.platform.files (program_files), so that a program and its engines
cannot drift apart, and a new engine is added in one place."""

from __future__ import annotations

import posixpath

# name: home (its directory), lib (where its engines go, under home), main
# (its file in the collection, and its name under home), engines, command
# and the command's usage line.
PROGRAMS = {
    "onebox": dict(
        home="/usr/local/lib/onebox/cli",
        lib="lib",
        main=("roles/app/files/onebox_cli.py", "onebox.py"),
        engines=("apps", "deploy_lock", "haproxy", "live_state", "release_log", "releases", "worker"),
        command="/usr/local/bin/onebox",
        usage="sudo onebox status | rollback APP | maintenance APP on|off | logs APP (--help)",
    ),
    "onebox-dr": dict(
        home="/usr/local/lib/onebox/dr",
        lib="",
        main=("roles/offsite/files/onebox_dr.py", "onebox_dr.py"),
        engines=("offsite", "pitr", "release_log", "pg_backup", "apps", "deploy_lock", "haproxy", "live_state"),
        command="/usr/local/bin/onebox-dr",
        usage="onebox-dr backup|check|wal-sync|probe|pitr-backup|fetch|restore-...  (see --help)",
    ),
    "onebox-acme": dict(
        home="/usr/local/lib/onebox/acme",
        lib="lib",
        main=("roles/haproxy/files/onebox_acme.py", "onebox_acme.py"),
        engines=("acme", "deploy_lock", "haproxy"),
        command="/usr/local/sbin/onebox-acme",
        usage="onebox-acme issue | renew | hook | metrics (see the file it runs)",
    ),
    "onebox-pg-backup": dict(
        home="/usr/local/lib/onebox",
        lib="",
        main=("roles/backup/files/onebox_pg_backup.py", "onebox_pg_backup.py"),
        engines=("pg_backup",),
        command="/usr/local/bin/onebox-pg-backup",
        usage="onebox-pg-backup backup|drill --config /etc/onebox/backup/JOB.json",
    ),
}


class ProgramError(ValueError):
    pass


def program(name):
    try:
        return PROGRAMS[name]
    except KeyError:
        raise ProgramError(f"no on-server program {name!r}; the programs are {', '.join(sorted(PROGRAMS))}") from None


def files(name, root, home=None, command=True):
    """onebox.platform.files entries for program NAME from the collection at
    ROOT: its directories, engines, main file and (with COMMAND) the command
    that runs it. HOME puts it elsewhere (a scratch directory), flat."""
    prog = program(name)
    base = home or prog["home"]
    lib = posixpath.join(base, prog["lib"]) if prog["lib"] and not home else base
    entries = [dict(path=base, state="directory")]
    if lib != base:
        entries.append(dict(path=lib, state="directory"))
    for engine in prog["engines"]:
        entries.append(dict(path=f"{lib}/{engine}.py", src=f"{root}/plugins/module_utils/{engine}.py"))
    src, target = prog["main"]
    entries.append(dict(path=f"{base}/{target}", src=f"{root}/{src}"))
    if command:
        script = f'#!/bin/sh\n# {prog["usage"]}\nexec /usr/bin/python3 {base}/{target} "$@"\n'
        entries.append(dict(path=prog["command"], content=script, mode="0755"))
    return entries
