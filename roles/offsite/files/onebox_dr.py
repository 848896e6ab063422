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
    onebox-dr plan DEST [--time T | --before-release APP:VERSION] [--keep-uncovered]
                                  the moment to recover to, the release of each app live
                                  then, each database's way back (WAL or its dump)
    onebox-dr restore-db [--time T | --before-release APP:VERSION] [--repo DIR]
    onebox-dr restore-redis DEST  Redis data from a fetched copy
    onebox-dr restore-volumes DEST
    onebox-dr restore-files DEST  release histories and the server id; /etc/onebox beside
    onebox-dr serving             does this server serve traffic? (recover.yml asks first)
    onebox-dr maintenance on|off  every web app's maintenance page (recover.yml over a live server)

restore-db, restore-volumes and restore-redis overwrite live data: each takes
the deploy lock of every app whose data it touches and shows those apps'
maintenance page meanwhile, and gives both back, whatever happens.

Settings: /etc/onebox/offsite.json (the offsite role writes it; the prune
run writes its own, with other credentials). Prints one
JSON object; exit 0 on success, 1 on failure (the message says what to do),
2 on bad settings. The timers' runs write Prometheus textfile metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

LIB = os.environ.get("ONEBOX_LIB", "/usr/local/lib/onebox/dr")
# After the standard library: an engine never hides one of its modules
# (module_utils has a platform.py, which the standard uuid imports).
sys.path.append(LIB)

import apps as model  # noqa: E402  (an app's names and places)
import deploy_lock  # noqa: E402
import haproxy  # noqa: E402
import live_state  # noqa: E402
import offsite  # noqa: E402
import pg_backup  # noqa: E402  (its write_atomic: temp file, fsync, rename)
import pitr  # noqa: E402
import release_log  # noqa: E402  (the owner of releases.jsonl and the audit log)

CONFIG = "/etc/onebox/offsite.json"


def load(path, missing_ok=False):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        if missing_ok:
            return {}
        print(f"onebox-dr: cannot read {path}: it is not there (run site.yml with onebox_offsite)", file=sys.stderr)
        sys.exit(2)
    except (OSError, ValueError) as exc:
        print(f"onebox-dr: cannot read {path}: {exc}", file=sys.stderr)
        sys.exit(2)


# The apps on this server: who is touched, what is live -----------------------


def actor():
    """Who runs this, for the locks and the audit log (refused when it holds a
    control character: it would forge audit lines)."""
    variable = "SUDO_USER" if os.environ.get("SUDO_USER") else "USER" if os.environ.get("USER") else ""
    who = os.environ.get(variable) if variable else "root"
    return release_log.check_actor(f"{who}@{socket.gethostname()} (onebox-dr)")


def known_apps(cfg):
    """The apps of the settings, and any other with a release history here."""
    out = {a["name"]: dict(a) for a in cfg.get("apps") or []}
    root = model.STATE_ROOT
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name in out or not model.NAME.match(name):
            continue
        if os.path.exists(model.paths(name)["releases"]):
            kind = "web"
            with contextlib.suppress(OSError, ValueError), open(model.paths(name)["settings"], encoding="utf-8") as fh:
                kind = json.load(fh).get("kind", "web")
            out[name] = {"name": name, "kind": kind}
    return [out[n] for n in sorted(out)]


def docker_colours(name):
    """{colour: live_state.colour_info} of app NAME's containers (none running without Docker)."""
    names = {colour: f"{name}-{colour}" for colour in model.COLOURS}
    found = {}
    try:
        proc = subprocess.run(
            ["docker", "container", "inspect", *names.values()], capture_output=True, text=True, check=False
        )
        found = {c["Name"].lstrip("/"): c for c in json.loads(proc.stdout or "[]")}
    except (OSError, ValueError):
        pass
    return {colour: live_state.colour_info(cname, found.get(cname)) for colour, cname in names.items()}


def haproxy_client(cfg):
    return haproxy.RuntimeClient(cfg.get("haproxy_socket") or "/run/haproxy/admin.sock")


def backend_view(cfg, name):
    """HAProxy's servers of app NAME's backend with their requests so far
    (stot); None when HAProxy is not there or has no such backend."""
    client = haproxy_client(cfg)
    backend = model.backend_name(name)
    try:
        servers = haproxy.describe_servers(client, backend)
        stats = client.stat(backend)
    except (haproxy.HAProxyError, OSError):
        return None
    for server, view in servers.items():
        view["total"] = int((stats.get(server) or {}).get("stot") or 0)
    return servers


def warn(message):
    """A warning on stderr (stdout is the JSON the playbooks read)."""
    print(f"onebox-dr: warning: {message}", file=sys.stderr)


def serving(cfg):
    """What this server shows of serving traffic (offsite.serving_reasons)."""
    views = []
    for app in known_apps(cfg):
        paths = model.paths(app["name"])
        history = release_log.read_releases(paths["releases"], warn)
        colours = docker_colours(app["name"])
        views.append(
            {
                "app": app["name"],
                "kind": app.get("kind") or "web",
                "last": next((r for r in reversed(history) if r.get("version")), None),
                "running": {c: info["running"] for c, info in colours.items()},
                "servers": backend_view(cfg, app["name"]) if (app.get("kind") or "web") == "web" else None,
            }
        )
    reasons = offsite.serving_reasons(views)
    return {"serving": bool(reasons), "reasons": reasons, "apps": [v["app"] for v in views]}


def colours_of(cfg, name):
    """(live colour, colour maintenance=off brings back) of web app NAME."""
    mfile = model.paths(name)["maintenance_file"]
    servers = backend_view(cfg, name)
    if servers is None:
        return "", release_log.read_maintenance(mfile, model.COLOURS)
    state = live_state.resolve(
        model.COLOURS,
        haproxy.live_servers(servers),
        docker_colours(name),
        lambda: release_log.read_maintenance(mfile, model.COLOURS),
    )
    return state["live"], state["maintenance"]


def switch(cfg, name, active):
    """Make ACTIVE the live servers of NAME's backend ([]: the maintenance page)."""
    client = haproxy_client(cfg)
    sw = haproxy.Switch(
        client,
        model.backend_name(name),
        active,
        inactive_state="drain" if active else "maint",
        health_timeout=float(cfg.get("health_timeout") or 30),
        drain_timeout=float(cfg.get("drain_timeout") or 30),
    )
    sw.allow_empty = not active
    sw.run()
    client.save_state(cfg.get("haproxy_state_file") or "/var/lib/haproxy/server-state")


def maintenance_on(cfg, name, why, who):
    """The maintenance page for web app NAME, remembering its live colour;
    '' (nothing done) when nothing is live or it already is in maintenance."""
    live, already = colours_of(cfg, name)
    if already or not live:
        return ""
    paths = model.paths(name)
    release_log.write_maintenance(paths["maintenance_file"], live)
    switch(cfg, name, [])
    release_log.append_audit(paths["audit_log"], "maintenance-on", f"via=onebox-dr {why}", who)
    return live


def maintenance_off(cfg, name, colour, why, who):
    paths = model.paths(name)
    switch(cfg, name, [colour])
    release_log.clear_maintenance(paths["maintenance_file"])
    release_log.append_audit(paths["audit_log"], "maintenance-off", f"via=onebox-dr {why}", who)


@contextlib.contextmanager
def quiesced(cfg, touched, what):
    """The deploy lock of every app in TOUCHED and, for the web apps that are
    live, the maintenance page, for the length of the block; both given back
    whatever happens (the apps that were in maintenance before stay)."""
    who = actor()
    names = [a["name"] for a in touched]
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                deploy_lock.holding(
                    [model.paths(n)["lock"] for n in names],
                    owner=who,
                    version=what,
                    message=what,
                    wait=float(cfg.get("lock_wait") or 0),
                    check_run=deploy_lock.liveness,
                    controller=socket.gethostname(),
                    pid=os.getpid(),
                )
            )
        except deploy_lock.LockError as exc:
            raise offsite.OffsiteError(f"{exc} Nothing was changed.") from None
        put, problems = {}, []
        try:
            for app in touched:
                if (app.get("kind") or "web") == "web":
                    colour = maintenance_on(cfg, app["name"], what, who)
                    if colour:
                        put[app["name"]] = colour
            yield {"locked": names, "maintenance": sorted(put)}
        finally:
            for name, colour in sorted(put.items()):
                try:
                    maintenance_off(cfg, name, colour, what, who)
                except (haproxy.HAProxyError, release_log.ReleaseLogError, OSError) as exc:
                    problems.append(
                        f"{name} stays in maintenance ({exc}): "
                        f"playbooks/maintenance.yml -e app={name} -e maintenance=off"
                    )
            if problems and sys.exc_info()[0] is None:
                raise offsite.OffsiteError("; ".join(problems))


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
        if not os.path.isdir(src):
            raise offsite.OffsiteError(
                f"the snapshot holds no copy of volume {volume} ({old_path}); it was left as it was"
            )
        run(["docker", "volume", "create", volume])
        dest = box.volume_path(volume)
        keep = ""
        if os.listdir(dest):
            keep = f"{dest.rstrip('/')}.pre-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            offsite.copy_tree(dest, keep)
        offsite.copy_tree(src, dest)
        done.append({"volume": volume, "files": sum(len(w[2]) for w in os.walk(dest)), "kept_copy": keep})
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
            history = release_log.read_releases(os.path.join(dest, "releases.jsonl"), warn)
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


def histories(root="/"):
    """{app: (release history, audit entries)} of the apps under ROOT (a
    fetched copy's files, or this server's /)."""
    state = os.path.join(root, model.STATE_ROOT.lstrip("/"))
    out = {}
    for app in sorted(os.listdir(state)) if os.path.isdir(state) else []:
        folder = os.path.join(state, app)
        if not os.path.isfile(os.path.join(folder, "releases.jsonl")):
            continue
        entries = [release_log.parse_audit_line(x) for x in release_log.read_audit(os.path.join(folder, "audit.log"))]
        out[app] = (release_log.read_releases(os.path.join(folder, "releases.jsonl"), warn), [e for e in entries if e])
    return out


def target_of(args, root="/"):
    """(moment or None for the latest, what it is) the arguments ask for."""
    if args.time:
        return pitr.parse_time(args.time), "the time asked for"
    if args.before_release:
        app, sep, version = args.before_release.partition(":")
        if not sep or not version:
            raise pitr.PitrError(
                f"--before-release takes APP:VERSION, not {args.before_release!r}. Nothing was changed."
            )
        known = histories(root)
        if app not in known:
            raise pitr.PitrError(
                f"app {app!r} has no release history here (apps with one: {', '.join(known) or 'none'}). "
                "Nothing was changed."
            )
        when, how = pitr.release_start(known[app][0], version, known[app][1])
        return when, f"just before the {how}"
    return None, "the latest point"


def releases_at(target, root="/"):
    """{app: the release live at TARGET} (the last one for None)."""
    return {app: pitr.release_at(history, target) for app, (history, _audit) in histories(root).items()}


def plan(cfg, args):
    """What a recovery from the fetched copy in ARGS.dest does, decided before
    anything is touched: the moment, the release of each app to deploy (the
    one live then), and each database's way back: the WAL (the shared
    cluster, with a fetched point-in-time repository) or its newest
    verified dump at or before the moment (any other database); with none,
    refused, or left as it is ("keep") with --keep-uncovered."""
    with open(os.path.join(args.dest, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    root = manifest["root"]
    target, how = target_of(args, root)
    if target is not None and target.timestamp() > time.time() + 60:
        raise pitr.PitrError(f"{pitr.pg_time(target)} is in the future; give a past time (UTC). Nothing was changed.")
    pitr_container = (cfg.get("pitr") or {}).get("container") if manifest.get("wal_repo") else ""
    databases = []
    for db in cfg.get("databases") or []:
        entry = {k: db.get(k) for k in ("name", "role", "container", "password_file", "apps", "job")}
        if pitr_container and db.get("container") == pitr_container:
            entry.update(way="wal", dump="")
        else:
            folder = os.path.join(root, model.paths(db["job"])["backup_dir"].lstrip("/"))
            found = [b for prefix in ("", "predeploy-") for b in pg_backup.list_backups(folder, prefix, db["name"])]
            chosen = pitr.dump_at(found, target)
            if chosen is None and not args.keep_uncovered:
                raise pitr.PitrError(
                    f"the snapshot holds no verified dump of {db['name']} "
                    f"{'made by ' + pitr.pg_time(target) if target else ''} ({folder}), and the point-in-time "
                    f"repository does not cover it. Nothing was changed. To restore the rest and leave {db['name']} "
                    "as it is on this server: recover_keep_uncovered=true (onebox-dr plan --keep-uncovered)."
                )
            if chosen is None:
                entry.update(way="keep", dump="")
            else:
                entry.update(way="dump", dump=chosen["path"], dump_time=chosen["time"].strftime("%Y-%m-%dT%H:%M:%SZ"))
        databases.append(entry)
    return {
        "target": target.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if target else "",
        "target_text": f"{pitr.pg_time(target)} ({how})" if target else how,
        "deploy": [{"app": a, "version": v} for a, v in sorted(releases_at(target, root).items()) if v],
        "databases": databases,
    }


def restore_db(cfg, args):
    c = cluster(cfg)
    target, how = target_of(args)
    probe = None
    if args.repo:
        # The fetched copy is checked before anything is touched.
        own_like(args.repo, c.repo)
        probe = pitr.Cluster(c.container, c.stanza, c.image, c.volume, args.repo, c.conf_dir, c.user, repo_path=c.repo)
        check_repo(probe, target)
    touched = offsite.touched_apps(known_apps(cfg), "restore-db", pitr_container=c.container)
    with quiesced(cfg, touched, "restore-db") as held:
        if probe is not None:
            # With the database stopped, the fetched copy becomes the
            # repository (the old one is kept beside, and put back if the
            # restore fails).
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
    out.update(held, target_text=f"{out['target']} ({how})")
    if target is not None:
        # The code still running may be newer than the data now: say so.
        live = releases_at(None)
        then = releases_at(target)
        out["releases_at_target"] = {a: then.get(a, "") for a in held["locked"]}
        out["notes"] = [
            f"{a} still runs {live[a]}, but its database is now as under {then.get(a) or 'no release'}: "
            f"playbooks/rollback.yml -e app={a} -e rollback_to={then[a]}"
            for a in held["locked"]
            if then.get(a) and live.get(a) and live[a] != then[a]
        ]
    return out


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
    for name in ("restore-db", "plan"):
        p = sub.add_parser(name)
        if name == "plan":
            p.add_argument("dest")
            p.add_argument(
                "--keep-uncovered",
                action="store_true",
                help="leave a database with no copy of that moment as it is, instead of refusing",
            )
        p.add_argument("--time", default="")
        p.add_argument("--before-release", default="", help="APP:VERSION")
    p = sub.choices["restore-db"]
    p.add_argument("--repo", default="", help="a fetched copy of the pgBackRest repository to restore from")
    sub.add_parser("serving")
    sub.add_parser("maintenance").add_argument("mode", choices=["on", "off"])
    args = parser.parse_args(argv)
    # Asked of a server before site.yml ever ran there: no settings yet.
    cfg = load(args.config, missing_ok=args.command == "serving")
    kind = {"backup": "backup", "check": "check", "wal-sync": "wal", "drill": "drill"}.get(args.command)
    try:
        if args.command == "serving":
            print(json.dumps(serving(cfg), sort_keys=True))
            return 0
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
            if not args.dry_run:
                out["retention_applied"] = box.mark_retention()
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
            out = restore_db(cfg, args)
        elif args.command == "plan":
            out = plan(cfg, args)
        elif args.command == "maintenance":
            out = maintenance(cfg, args.mode)
        elif args.command in ("restore-redis", "restore-volumes", "restore-files"):
            with open(os.path.join(args.dest, "manifest.json"), encoding="utf-8") as fh:
                manifest = json.load(fh)
            if args.command == "restore-files":
                out = restore_files(cfg, manifest)
            else:
                touched = offsite.touched_apps(known_apps(cfg), args.command, manifest)
                with quiesced(cfg, touched, args.command) as held:
                    if args.command == "restore-redis":
                        out = {"redis": restore_redis(cfg, manifest)}
                    else:
                        out = {"volumes": restore_volumes(manifest, box)}
                out.update(held)
    except (
        offsite.OffsiteError,
        pitr.PitrError,
        release_log.ReleaseLogError,
        haproxy.HAProxyError,
        deploy_lock.LockError,
        subprocess.SubprocessError,
        OSError,
    ) as exc:
        if kind:
            record(cfg, kind, False, error=str(exc)[-500:])
        print(f"onebox-dr {args.command}: {exc}", file=sys.stderr)
        return 1
    if kind:
        kept = ("bytes_added", "seconds", "snapshot", "target", "sent", "retention_applied")
        record(cfg, kind, True, **{k: v for k, v in out.items() if k in kept})
    print(json.dumps(out, sort_keys=True, default=str))
    return 0


def maintenance(cfg, mode):
    """Every web app's maintenance page on (remembering its live colour), or
    off (back to the colour remembered, which a deploy meanwhile updated);
    each under its deploy lock. recover.yml holds a live server in
    maintenance from its first restore to its last deploy."""
    who = actor()
    done = {}
    for app in known_apps(cfg):
        if (app.get("kind") or "web") != "web":
            continue
        name = app["name"]
        try:
            with deploy_lock.holding(
                [model.paths(name)["lock"]],
                owner=who,
                version=f"maintenance {mode}",
                message="recover.yml",
                check_run=deploy_lock.liveness,
                controller=socket.gethostname(),
                pid=os.getpid(),
            ):
                if mode == "on":
                    colour = maintenance_on(cfg, name, "recover", who)
                else:
                    _live, colour = colours_of(cfg, name)
                    if colour:
                        maintenance_off(cfg, name, colour, "recover", who)
        except deploy_lock.LockError as exc:
            raise offsite.OffsiteError(f"{exc} (done so far: {done or 'nothing'})") from None
        if colour:
            done[name] = colour
    return {"maintenance": mode, "apps": done}


def check_repo(probe, target):
    """The fetched repository: its files against their checksums, then the target."""
    probe.verify()
    pitr.check_target(probe.info_offline()["backups"], target)


def own_like(path, like):
    """Give PATH (a fetched copy, owned as on the off-site host) the owner
    of LIKE (the live repository: the database image's postgres user)."""
    stat = os.stat(like)
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
