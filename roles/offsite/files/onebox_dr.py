# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""onebox-dr: the server's off-site copy and its recovery, run by systemd
timers and by playbooks/recover.yml.

    onebox-dr backup              restic snapshot of files, volumes, Redis (never a deletion)
    onebox-dr check [--subset 5%] restic check (all data without --subset)
    onebox-dr wal-sync            add what is new in the pgBackRest repository to its mirror
    onebox-dr probe               do the copies refuse a deletion from this server? (metric)
    onebox-dr prune [--dry-run]   retention, with the prune run's own credentials
                                  (playbooks/offsite-prune.yml, not on the server)
    onebox-dr pitr-backup         pgBackRest base backup (full weekly, else diff)
    onebox-dr pitr-info           pgBackRest info (JSON)
    onebox-dr drill [--query SQL] restore to now into a scratch container, check, remove
    onebox-dr fetch DEST          verify the off-site copies, restore them into DEST
    onebox-dr restore-db [--time T | --before-release APP:VERSION] [--repo DIR]
    onebox-dr restore-redis DEST  Redis data from a fetched copy
    onebox-dr restore-volumes DEST
    onebox-dr restore-files DEST  release histories and the server id; /etc/onebox beside

Settings: /etc/onebox/offsite.json (the offsite role writes it; the prune
run writes its own, with other credentials). Prints one
JSON object; exit 0 on success, 1 on failure (the message says what to do),
2 on bad settings. The timers' runs write Prometheus textfile metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

LIB = os.environ.get("ONEBOX_LIB", "/usr/local/lib/onebox/dr")
sys.path.insert(0, LIB)

import offsite  # noqa: E402
import pg_backup  # noqa: E402  (its write_atomic: temp file, fsync, rename)
import pitr  # noqa: E402
import release_log  # noqa: E402  (the owner of releases.jsonl)

CONFIG = "/etc/onebox/offsite.json"


def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"onebox-dr: cannot read {path}: {exc}", file=sys.stderr)
        sys.exit(2)


def cluster(cfg, repo=None):
    p = cfg.get("pitr") or {}
    if not p.get("container"):
        raise pitr.PitrError("point-in-time recovery is off on this server (postgres_pitr_enabled)")
    return pitr.Cluster(
        p["container"],
        p["stanza"],
        p["image"],
        p["volume"],
        repo or p["repo"],
        p["conf_dir"],
        p.get("user") or "postgres",
    )


def state_path(cfg):
    return os.path.join(cfg.get("state_dir") or "/var/lib/onebox/offsite", "state.json")


def read_state(cfg):
    try:
        with open(state_path(cfg), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_textfile(cfg, name, text):
    """A Prometheus textfile for node_exporter, written whole."""
    os.makedirs(cfg["metrics_dir"], exist_ok=True)
    pg_backup.write_atomic(os.path.join(cfg["metrics_dir"], name), text.encode(), mode=0o644)


def save_state(cfg, state):
    """Write the state file, then the metrics the alerts read from it."""
    os.makedirs(os.path.dirname(state_path(cfg)), exist_ok=True)
    pg_backup.write_atomic(state_path(cfg), json.dumps(state, sort_keys=True).encode())
    if cfg.get("metrics_dir"):
        write_textfile(cfg, "onebox_offsite.prom", offsite.metrics_text(state, cfg.get("max_ages")))


def record(cfg, kind, ok, **extra):
    """Remember the outcome of KIND and rewrite the metrics file."""
    state = read_state(cfg)
    entry = state.get(kind, {})
    entry.update(extra)
    entry["ok"] = ok
    entry["last_attempt"] = time.time()
    if ok:
        entry["last_success"] = entry["last_attempt"]
        entry.pop("error", None)
    state[kind] = entry
    save_state(cfg, state)


def pitr_metrics(cfg, info=None):
    """The PITR metrics; INFO: pgbackrest info already read by this run."""
    if not (cfg.get("pitr") or {}).get("container") or not cfg.get("metrics_dir"):
        return
    try:
        c = cluster(cfg)
        text = pitr.metrics(c.stanza, info or c.info(), c.archiver(), time.time())
    except (pitr.PitrError, subprocess.SubprocessError, OSError):
        return
    write_textfile(cfg, "onebox_pitr.prom", text)


def wal_sync(cfg, box):
    """Add what is new in the pgBackRest repository to the mirror; what was
    sent before is remembered in the state file."""
    c = cluster(cfg)
    seen = {}

    def complete_backups():
        seen["info"] = c.info()
        return seen["info"]["backups"]

    sent = box.wal_sync(complete_backups, c.stanza, done=(read_state(cfg).get("wal") or {}).get("sent"))
    pitr_metrics(cfg, seen.get("info"))
    return {"mirrored": cfg.get("wal_target"), "sent": sent}


def restore_redis(cfg, manifest):
    """Each Redis container's data from the snapshot: a copy of its current
    data is kept, the RDB goes into the empty data directory, and Redis
    starts once without AOF (with AOF on and no AOF file it would start
    empty), writes the AOF from what it loaded, and is started normally."""
    done = []
    root = manifest["root"]
    stage = os.path.join(root, cfg["stage_dir"].lstrip("/"))
    for entry in manifest.get("redis") or []:
        name = entry["container"]
        rdb = os.path.join(stage, "redis", name, "dump.rdb")
        info = json.loads(run(["docker", "inspect", name]))[0]
        image = info["Config"]["Image"]
        mounts = [m for m in info["Mounts"] if m.get("Destination") == "/data"]
        if not mounts:
            raise offsite.OffsiteError(f"Redis container {name} has no /data mount; cannot restore it")
        data = mounts[0]["Source"]
        run(["docker", "stop", name])
        keep = f"{data.rstrip('/')}.pre-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.makedirs(keep, mode=0o700)
        pitr.move_contents(data, keep)
        shutil.copy2(rdb, os.path.join(data, "dump.rdb"))
        once = f"{name}-restore"
        run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                once,
                "-v",
                f"{mounts[0]['Name']}:/data",
                image,
                "redis-server",
                "--appendonly",
                "no",
            ]
        )
        try:
            wait_redis(once, lambda i: "loading:0" in i)
            run(["docker", "exec", once, "redis-cli", "CONFIG", "SET", "appendonly", "yes"])
            wait_redis(
                once,
                lambda i: "aof_enabled:1" in i and "aof_rewrite_in_progress:0" in i and "aof_rewrite_scheduled:0" in i,
            )
            keys = run(["docker", "exec", once, "redis-cli", "DBSIZE"]).strip()
            run(["docker", "exec", once, "redis-cli", "SHUTDOWN", "SAVE"], check=False)
        finally:
            subprocess.run(["docker", "rm", "-f", once], capture_output=True, check=False)
        run(["docker", "start", name])
        done.append({"container": name, "keys": int(keys or 0), "kept_copy": keep})
    return done


def wait_redis(container, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["docker", "exec", container, "redis-cli", "INFO", "persistence"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and ready(proc.stdout):
            return
        time.sleep(0.3)
    raise offsite.OffsiteError(f"Redis in {container} was not ready within {timeout} s")


def restore_volumes(manifest, box):
    done = []
    for volume, old_path in sorted((manifest.get("volumes") or {}).items()):
        src = os.path.join(manifest["root"], old_path.lstrip("/"))
        run(["docker", "volume", "create", volume])
        dest = box.volume_path(volume)
        if os.listdir(dest):
            keep = f"{dest.rstrip('/')}.pre-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            offsite.copy_tree(dest, keep)
        offsite.copy_tree(src, dest)
        done.append({"volume": volume, "files": sum(len(walked[2]) for walked in os.walk(dest))})
    return done


def restore_files(cfg, manifest):
    """Release histories and audit logs back in place (the deploy of the
    last release appends to them), the server id, and /etc/onebox beside
    the live one (the inventory writes the live configuration)."""
    root = manifest["root"]
    state_src = os.path.join(root, "var/lib/onebox")
    apps = []
    if os.path.isdir(state_src):
        for app in sorted(os.listdir(state_src)):
            src = os.path.join(state_src, app)
            if not os.path.isfile(os.path.join(src, "releases.jsonl")):
                continue
            dest = os.path.join("/var/lib/onebox", app)
            os.makedirs(dest, mode=0o750, exist_ok=True)
            for name in ("releases.jsonl", "audit.log"):
                if os.path.exists(os.path.join(src, name)):
                    if os.path.exists(os.path.join(dest, name)):
                        shutil.copy2(os.path.join(dest, name), os.path.join(dest, f"{name}.before-recovery"))
                    shutil.copy2(os.path.join(src, name), os.path.join(dest, name))
            history = release_log.read_releases(os.path.join(dest, "releases.jsonl"))
            apps.append({"app": app, "last_release": pitr.last_release(history)})
    etc = os.path.join(root, "etc/onebox")
    beside = ""
    if os.path.isdir(etc):
        beside = (
            f"/var/lib/onebox/recovered/etc-onebox-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(manifest['time']))}"
        )
        offsite.copy_tree(etc, beside)
    with open(cfg["server_id_file"], "w", encoding="utf-8") as fh:
        fh.write(manifest["server_id"] + "\n")
    return {"apps": apps, "etc_onebox_copy": beside, "server_id": manifest["server_id"]}


def run(argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise offsite.OffsiteError(f"{' '.join(argv[:4])}... failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def target_of(args):
    if args.time:
        return pitr.parse_time(args.time)
    if args.before_release:
        app, sep, version = args.before_release.partition(":")
        if not sep or not version:
            raise pitr.PitrError(f"--before-release takes APP:VERSION, not {args.before_release!r}")
        path = f"/var/lib/onebox/{app}/releases.jsonl"
        if not os.path.exists(path):
            raise pitr.PitrError(f"app {app!r} has no release history here ({path}). Nothing was changed.")
        return pitr.before_release(release_log.read_releases(path), version)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="onebox-dr")
    parser.add_argument("--config", default=CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backup")
    p = sub.add_parser("check")
    p.add_argument("--subset", default="")
    sub.add_parser("wal-sync")
    sub.add_parser("probe")
    sub.add_parser("prune").add_argument("--dry-run", action="store_true")
    sub.add_parser("pitr-backup")
    sub.add_parser("pitr-info")
    sub.add_parser("drill").add_argument("--query", default="")
    sub.add_parser("metrics")
    for name in ("fetch", "restore-redis", "restore-volumes", "restore-files"):
        sub.add_parser(name).add_argument("dest")
    p = sub.add_parser("restore-db")
    p.add_argument("--time", default="")
    p.add_argument("--before-release", default="", help="APP:VERSION")
    p.add_argument("--repo", default="", help="a fetched copy of the pgBackRest repository to restore from")
    args = parser.parse_args(argv)
    cfg = load(args.config)
    kind = {"backup": "backup", "check": "check", "wal-sync": "wal", "drill": "drill"}.get(args.command)
    try:
        box = offsite.Offsite(cfg)
        if args.command == "backup":
            out = box.backup()
        elif args.command == "check":
            box.check(args.subset)
            out = {"checked": args.subset or "all data"}
        elif args.command == "wal-sync":
            out = wal_sync(cfg, box)
        elif args.command == "probe":
            out = box.probe()
            state = read_state(cfg)
            state["append_only"] = out
            save_state(cfg, state)
        elif args.command == "prune":
            out = {"restic": box.forget(dry_run=args.dry_run)}
            if cfg.get("wal_target"):
                out["wal"] = box.wal_prune(int(cfg.get("wal_keep_full") or 2), dry_run=args.dry_run)
        elif args.command == "pitr-backup":
            out = {"type": cluster(cfg).backup(full_every_days=int(cfg.get("pitr_full_every_days") or 7))}
            pitr_metrics(cfg)
        elif args.command == "drill":
            out = cluster(cfg).drill(args.query or cfg.get("drill_query") or "")
        elif args.command == "pitr-info":
            out = cluster(cfg).info()
        elif args.command == "metrics":
            pitr_metrics(cfg)
            out = {"metrics": cfg.get("metrics_dir")}
        elif args.command == "fetch":
            manifest = box.fetch(os.path.join(args.dest, "files"))
            if cfg.get("wal_target"):
                wal = os.path.join(args.dest, "pgbackrest")
                got = box.wal_fetch(wal)
                manifest["wal_server_id"] = got["server_id"]
                manifest["wal_info_version"] = got["info_version"]
                manifest["wal_repo"] = wal
                if manifest["wal_server_id"] and manifest["wal_server_id"] != manifest["server_id"]:
                    raise offsite.OffsiteError(
                        f"the WAL mirror belongs to server {manifest['wal_server_id']} but the snapshot to "
                        f"{manifest['server_id']}; check offsite_wal_target. Nothing was changed."
                    )
            with open(os.path.join(args.dest, "manifest.json"), "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, sort_keys=True)
            out = manifest
        elif args.command == "restore-db":
            c = cluster(cfg)
            target = target_of(args)
            if args.repo:
                # The fetched copy is checked before anything is touched;
                # then, with the database stopped, it becomes the repository
                # (the old one is kept beside, and put back if the restore fails).
                own_like(args.repo, c.repo)
                probe = pitr.Cluster(
                    c.container, c.stanza, c.image, c.volume, args.repo, c.conf_dir, c.user, repo_path=c.repo
                )
                check_repo(probe, target)
                c.sh(["docker", "stop", "-t", "60", c.container])
                kept = swap_repo(c.repo, args.repo)
                try:
                    out = c.restore(target)
                except pitr.PitrError:
                    if kept:
                        shutil.rmtree(c.repo)
                        os.rename(kept, c.repo)
                        c.sh(["docker", "restart", c.container], check=False)
                    raise
                out["repository_kept"] = kept
            else:
                out = c.restore(target)
        elif args.command in ("restore-redis", "restore-volumes", "restore-files"):
            with open(os.path.join(args.dest, "manifest.json"), encoding="utf-8") as fh:
                manifest = json.load(fh)
            if args.command == "restore-redis":
                out = {"redis": restore_redis(cfg, manifest)}
            elif args.command == "restore-volumes":
                out = {"volumes": restore_volumes(manifest, box)}
            else:
                out = restore_files(cfg, manifest)
    except (
        offsite.OffsiteError,
        pitr.PitrError,
        release_log.ReleaseLogError,
        subprocess.SubprocessError,
        OSError,
    ) as exc:
        if kind:
            record(cfg, kind, False, error=str(exc)[-500:])
        print(f"onebox-dr {args.command}: {exc}", file=sys.stderr)
        return 1
    if kind:
        kept = ("bytes_added", "seconds", "snapshot", "target", "sent")
        record(cfg, kind, True, **{k: v for k, v in out.items() if k in kept})
    print(json.dumps(out, sort_keys=True, default=str))
    return 0


def check_repo(probe, target):
    """The fetched repository: its files against their checksums, then the target."""
    probe.verify()
    pitr.check_target(probe.info_offline()["backups"], target)


def own_like(path, model):
    """Give PATH (a fetched copy, owned as on the off-site host) the owner
    of MODEL (the live repository: the database image's postgres user)."""
    stat = os.stat(model)
    for top, dirs, files in os.walk(path):
        for name in [top] + [os.path.join(top, d) for d in dirs] + [os.path.join(top, f) for f in files]:
            os.lchown(name, stat.st_uid, stat.st_gid)


def swap_repo(live, fetched):
    """Make FETCHED the repository at LIVE; the old one stays beside it
    (returned; "" when it was empty)."""
    live = live.rstrip("/")
    stat = os.stat(live)
    kept = ""
    if os.listdir(live):
        kept = f"{live}.before-recovery-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.rename(live, kept)
    else:
        os.rmdir(live)
    shutil.copytree(fetched, live, symlinks=True)
    os.chmod(live, stat.st_mode & 0o7777)
    own_like(live, fetched)
    return kept


if __name__ == "__main__":
    sys.exit(main())
