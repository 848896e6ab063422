# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""onebox-pg-backup: the pg_backup engine, run by systemd timers.

Installed as /usr/local/lib/onebox/onebox_pg_backup.py with a
/usr/local/bin/onebox-pg-backup wrapper.

    onebox-pg-backup backup --config /etc/onebox/backup/JOB.json
    onebox-pg-backup drill  --config /etc/onebox/backup/JOB.json

`backup` takes a verified backup and applies retention (the same code as
the onebox.platform.pg_backup module, installed beside this program).
With `offsite_target` set, each good backup (and any kept one still
missing there) is then copied with rsync (over SSH for host:path targets);
there, only what retention removed here is ever deleted.
`drill` restores the newest backup into a scratch database, runs a check
query and drops it. A backup dated more than a few minutes ahead of the
clock is never the newest: it is kept, never drilled, and reported (a
WARNING line on stderr, the onebox_backup_future_dated metric). Both write Prometheus textfile metrics for
node_exporter and keep counters in a state file. Exit 0 on success, 1 on a
failed backup or drill, 2 on a bad configuration, 3 when the backup is
good but the off-site copy failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

LIB = os.environ.get("ONEBOX_LIB", "/usr/local/lib/onebox")
sys.path.insert(0, LIB)

import pg_backup as engine  # noqa: E402  (installed beside this program)


def load_config(path):
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"onebox-pg-backup: cannot read config {path}: {exc}") from None
    for key in ("job", "dbname", "backup_dir"):
        if not cfg.get(key):
            print(f"onebox-pg-backup: config {path} lacks '{key}'", file=sys.stderr)
            sys.exit(2)
    return cfg


def backup_job(cfg):
    """The Backup the job file describes, through the pg_backup module's own
    option mapping and defaults (engine.BACKUP_ARGS); exit 2 on a bad file."""
    try:
        return engine.backup_from_params(engine.params_with_defaults(cfg))
    except engine.BackupError as exc:
        print(f"onebox-pg-backup: bad job file for {cfg['job']}: {exc}", file=sys.stderr)
        sys.exit(2)


def load_state(cfg):
    path = os.path.join(cfg.get("state_dir", "/var/lib/onebox/backup"), f"{cfg['job']}.json")
    try:
        with open(path) as fh:
            return path, json.load(fh)
    except (OSError, ValueError):
        return path, {}


def save_state(path, state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    engine.write_atomic(path, json.dumps(state, indent=1, sort_keys=True).encode(), mode=0o640)


METRICS = (
    ("onebox_backup_last_success_timestamp_seconds", "gauge", "Unix time of the last good backup.", "last_success"),
    ("onebox_backup_last_size_bytes", "gauge", "Size of the last good backup.", "last_size"),
    ("onebox_backup_last_duration_seconds", "gauge", "Duration of the last good backup run.", "last_duration"),
    ("onebox_backup_last_run_success", "gauge", "1 if the last backup run succeeded, else 0.", "last_run_ok"),
    ("onebox_backup_failures_total", "counter", "Failed backup runs.", "failures"),
    ("onebox_backup_kept", "gauge", "Backups kept after retention.", "kept"),
    (
        "onebox_backup_future_dated",
        "gauge",
        "Backups dated ahead of the server's clock (kept, never counted as the newest, never restored by default).",
        "future_dated",
    ),
    ("onebox_backup_restore_drill_success", "gauge", "1 if the last restore drill passed, else 0.", "drill_ok"),
    ("onebox_backup_restore_drill_timestamp_seconds", "gauge", "Unix time of the last restore drill.", "drill_time"),
    ("onebox_backup_max_age_seconds", "gauge", "Age beyond which the newest good backup is stale.", "max_age"),
    (
        "onebox_backup_offsite_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last good off-site copy.",
        "offsite_last_success",
    ),
    ("onebox_backup_offsite_last_run_success", "gauge", "1 if the last off-site copy succeeded, else 0.", "offsite_ok"),
)


def write_metrics(cfg, state):
    directory = cfg.get("metrics_dir")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    # Not "job": Prometheus keeps that label for the scrape job.
    job = cfg["job"].replace("\\", "\\\\").replace('"', '\\"')
    values = dict(state)
    if cfg.get("max_age"):
        values["max_age"] = int(cfg["max_age"])
    lines = []
    for name, kind, helptext, key in METRICS:
        if key not in values:
            continue
        lines += [f"# HELP {name} {helptext}", f"# TYPE {name} {kind}", f'{name}{{backup="{job}"}} {values[key]}']
    engine.write_atomic(
        os.path.join(directory, f"onebox_backup_{cfg['job']}.prom"), ("\n".join(lines) + "\n").encode(), mode=0o644
    )


def do_backup(cfg, job):
    state_path, state = load_state(cfg)
    try:
        out = job.run()
    except (engine.BackupError, OSError) as exc:
        state["failures"] = int(state.get("failures", 0)) + 1
        state["last_run_ok"] = 0
        save_state(state_path, state)
        write_metrics(cfg, state)
        print(f"backup of {cfg['dbname']} FAILED: {exc}", file=sys.stderr)
        return 1
    state.update(
        last_success=int(time.time()),
        last_size=out["bytes"],
        last_duration=out["duration"],
        last_run_ok=1,
        kept=len(out["kept"]),
        last_path=out["path"],
        future_dated=len(out["future"]),
    )
    state.setdefault("failures", 0)
    save_state(state_path, state)
    write_metrics(cfg, state)
    print(
        f"backup of {cfg['dbname']}: {out['path']} ({out['bytes']} bytes, {out['duration']} s, "
        f"sha256 {out['sha256'][:16]}...), kept {len(out['kept'])}, pruned {out['pruned'] or 'none'}"
    )
    if out["warning"]:
        print(f"WARNING: backups of {cfg['dbname']} in {job.dir}: {out['warning']}", file=sys.stderr)
    if not cfg.get("offsite_target"):
        return 0
    try:
        copy_offsite(cfg, out["kept"], out["pruned"])
    except (OffsiteError, OSError) as exc:
        state["offsite_ok"] = 0
        print(f"off-site copy to {cfg['offsite_target']} FAILED: {exc}", file=sys.stderr)
        code = 3
    else:
        state.update(offsite_ok=1, offsite_last_success=int(time.time()))
        code = 0
    save_state(state_path, state)
    write_metrics(cfg, state)
    return code


class OffsiteError(Exception):
    pass


# Names this program writes; anything else never goes into a filter rule.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def offsite_rsync(cfg, args):
    argv = [cfg.get("rsync_bin") or "rsync", f"--timeout={int(cfg.get('offsite_timeout', 300))}"]
    if ":" in cfg["offsite_target"]:
        ssh = [
            cfg.get("ssh_bin") or "ssh",
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o ConnectTimeout=20",
        ]
        if cfg.get("offsite_ssh_key"):
            ssh.append(f"-i {cfg['offsite_ssh_key']}")
        if cfg.get("offsite_known_hosts"):
            ssh.append(f"-o UserKnownHostsFile={cfg['offsite_known_hosts']}")
        if cfg.get("offsite_port"):
            ssh.append(f"-p {int(cfg['offsite_port'])}")
        argv += ["-e", " ".join(ssh)]
    proc = subprocess.run(argv + args, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise OffsiteError(f"rsync exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}")


def copy_offsite(cfg, kept, pruned):
    """Copy every kept backup the target lacks (rsync skips what is there and
    renames each file into place only when complete), then delete there
    exactly what retention pruned here (never a file this side still has or
    never knew): an emptied or lost local directory deletes nothing."""
    target = cfg["offsite_target"].rstrip("/") + "/"
    src = cfg["backup_dir"]
    paths = []
    for name in kept:
        for candidate in (name, f"{name}.globals.sql", f"{name}.sha256"):
            if os.path.lexists(os.path.join(src, candidate)):
                paths.append(os.path.join(src, candidate))
    if paths:
        offsite_rsync(cfg, ["-rt", "--chmod=D0700,F0600", *paths, target])
    if not pruned or not cfg.get("offsite_prune", True):
        return
    rules = []
    for name in pruned:
        if not SAFE_NAME.match(name):
            raise OffsiteError(f"refusing to delete an odd name off-site: {name!r}")
        rules += [f"--include=/{name}", f"--include=/{name}/***"]
        rules += [f"--include=/{name}.sha256", f"--include=/{name}.globals.sql"]
    with tempfile.TemporaryDirectory(prefix="onebox-empty-") as empty:
        offsite_rsync(cfg, ["-r", "--delete", *rules, "--exclude=*", f"{empty}/", target])


def do_drill(cfg, job):
    """Restore the newest backup into a scratch database and check it."""
    state_path, state = load_state(cfg)
    scratch = cfg.get("drill_db", f"{cfg['dbname']}_restore_drill")
    run = job.runner
    ok = 0
    try:
        path = engine.latest_backup(
            job.dir, job.prefix, job.dbname, warn=lambda text: print(f"WARNING: {text}", file=sys.stderr)
        )
        run.psql_value(f"DROP DATABASE IF EXISTS {engine.quote_ident(scratch)}")
        # The scratch copy holds the app's data: closed to every app's role
        # (CONNECT not PUBLIC's) before anything is restored into it.
        run.psql_value(f"CREATE DATABASE {engine.quote_ident(scratch)}")
        run.psql_value(f"REVOKE CONNECT, TEMPORARY ON DATABASE {engine.quote_ident(scratch)} FROM PUBLIC")
        out = engine.Restore(run, path, scratch, create=False, lock_dir=cfg["backup_dir"]).run()
        # Default: the restored copy answers. Set drill_query to check your data
        # (e.g. "SELECT count(*) > 0 FROM orders"); 0, f or nothing fails the drill.
        check = cfg.get("drill_query") or "SELECT 1"
        value = run.psql_value(check, scratch)
        if not value or value in ("0", "f", "false"):
            raise engine.BackupError(f"check query returned {value!r}")
        ok = 1
        print(f"restore drill of {path}: restored {out['tables']} tables in {out['duration']} s; check query: {value}")
    except (engine.BackupError, OSError) as exc:
        print(f"restore drill FAILED: {exc}", file=sys.stderr)
    finally:
        try:
            run.psql_value(f"DROP DATABASE IF EXISTS {engine.quote_ident(scratch)}")
        except engine.BackupError as exc:
            print(f"could not drop {scratch}: {exc}", file=sys.stderr)
    state.update(drill_ok=ok, drill_time=int(time.time()))
    save_state(state_path, state)
    write_metrics(cfg, state)
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="onebox-pg-backup", description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("action", choices=["backup", "drill"])
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    job = backup_job(cfg)
    return do_backup(cfg, job) if args.action == "backup" else do_drill(cfg, job)


if __name__ == "__main__":
    sys.exit(main())
