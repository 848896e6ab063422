"""onebox: the incident path on the server, for when all you have is SSH.

    sudo onebox status [APP]                  exit 0 healthy, 1 degraded, 2 down
    sudo onebox rollback APP [--to VERSION]
    sudo onebox maintenance APP on|off
    sudo onebox logs APP [-f] [--tail N] [--colour C]
    sudo onebox fallbacks [APP]
    sudo onebox metrics [--textfile-dir DIR]

Every command takes --json (one JSON object on stdout); a refusal or an
error exits 2 and says why on stderr (and in the JSON).

The same engine as the playbooks (the collection's module_utils, installed
beside this file): the same deploy lock, release history, audit log, HAProxy
Runtime API calls and rollback choice. A rollback here is the fast one - the
standby colour still runs the target release, one switch; anything more
(starting an old image, restoring the database) is playbooks/rollback.yml.
A worker's rollback starts its stopped container (the previous release) in
place of the running one, in the app's order (module_utils worker).
Settings: /etc/onebox/onebox.json and each app's settings file (apps.paths),
written by the app role."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import apps
import deploy_lock
import haproxy
import live_state
import release_log
import releases
import worker

CONFIG = "/etc/onebox/onebox.json"
DEFAULTS = {
    "haproxy_socket": "/run/haproxy/admin.sock",
    "haproxy_state_file": "/var/lib/haproxy/server-state",
    "drain_timeout": 30,
    "health_timeout": 30,
}


class Refused(Exception):
    """Stop with this message; nothing was changed unless it says so."""


def settings():
    out = dict(DEFAULTS)
    if os.path.exists(CONFIG):
        with open(CONFIG, encoding="utf-8") as fh:
            out.update(json.load(fh))
    return out


def actor():
    """Who runs this, for the audit log, history and lock: SUDO_USER's name
    (USER, root) at this host. Refused, before anything is done, when it
    holds a newline or another control character: it would forge audit lines."""
    variable = "SUDO_USER" if os.environ.get("SUDO_USER") else "USER" if os.environ.get("USER") else ""
    who = os.environ.get(variable) if variable else "root"
    try:
        return release_log.check_actor(f"{who}@{socket.gethostname()} (onebox)")
    except release_log.ReleaseLogError as exc:
        raise Refused(f"{variable or 'the user name'} is not a plain name: {exc} Nothing was changed.") from None


def warn(message):
    """A warning that does not stop the command (a torn history line)."""
    print(f"onebox: warning: {message}", file=sys.stderr)


class Report:
    """What a command says: lines for people, or (--json) one JSON object on
    stdout at the end, built from the same facts."""

    as_json = False
    data = {}

    @classmethod
    def say(cls, text):
        if not cls.as_json:
            print(text)

    @classmethod
    def add(cls, **facts):
        cls.data.update(facts)


say = Report.say


def known_apps():
    root = apps.STATE_ROOT
    if not os.path.isdir(root):
        return []
    return sorted(
        name
        for name in os.listdir(root)
        if apps.NAME.match(name) and os.path.exists(os.path.join(root, name, "releases.jsonl"))
    )


def docker_colours(name, env_file=None):
    """{colour: live_state.colour_info} of the app's containers, from one
    `docker container inspect` (a missing container is left out of its output),
    each compared with the app's env file as it is now."""
    names = {colour: f"{name}-{colour}" for colour in apps.COLOURS}
    env = live_state.read_env_file(env_file)
    _rc, out, err = docker_cli(["container", "inspect", *names.values()])
    try:
        found = {c["Name"].lstrip("/"): c for c in json.loads(out or "[]")}
    except ValueError:
        raise Refused(f"docker container inspect failed: {err.strip()[:200]}") from None
    return {colour: live_state.colour_info(cname, found.get(cname), env) for colour, cname in names.items()}


class App:
    def __init__(self, name, cfg):
        if name not in known_apps():
            raise Refused(f"no app '{name}' on this server (apps: {', '.join(known_apps()) or 'none'})")
        self.name = name
        self.cfg = cfg
        self.paths = apps.paths(name)
        self.maintenance_file = self.paths["maintenance_file"]
        self.client = haproxy.RuntimeClient(cfg["haproxy_socket"])
        self.settings = {"kind": "web"}
        if os.path.exists(self.paths["settings"]):
            with open(self.paths["settings"], encoding="utf-8") as fh:
                self.settings.update(json.load(fh))
        self.kind = self.settings["kind"]

    def state(self):
        colours = docker_colours(self.name, self.paths["env_file"])
        if self.kind == "worker":
            # No HAProxy backend: the live colour is the one whose container runs.
            servers = {}
            active = [c for c in apps.COLOURS if colours[c]["running"]]
        else:
            servers = haproxy.describe_servers(self.client, self.paths["backend"])
            active = haproxy.live_servers(servers)
        state = live_state.resolve(
            apps.COLOURS,
            active,
            colours,
            lambda: release_log.read_maintenance(self.maintenance_file, apps.COLOURS),
        )
        state.update(servers=servers, colours=colours, history=release_log.read_releases(self.paths["releases"], warn))
        return state

    def lock(self, what):
        try:
            holder, _waited, _broke = deploy_lock.acquire(
                self.paths["lock"],
                owner=actor(),
                version=what,
                message=what,
                controller=socket.gethostname(),
                pid=os.getpid(),
            )
        except deploy_lock.LockError as exc:
            raise Refused(f"{exc} Nothing was changed.") from None
        return holder

    def unlock(self, holder):
        deploy_lock.release(self.paths["lock"], holder["token"])

    def switch(self, active, inactive_state="drain", allow_empty=False):
        sw = haproxy.Switch(
            self.client,
            self.paths["backend"],
            active,
            inactive_state=inactive_state,
            health_timeout=self.cfg["health_timeout"],
            drain_timeout=self.cfg["drain_timeout"],
        )
        sw.allow_empty = allow_empty
        result = sw.run()
        self.client.save_state(self.cfg["haproxy_state_file"])
        return result

    def audit(self, action, detail):
        release_log.append_audit(self.paths["audit_log"], action, detail, actor())


def cmd_status(cfg, args):
    """Each app's state; exits with the worst app's health (0 healthy, 1
    degraded, 2 down: live_state.health)."""
    names = [args.app] if args.app else known_apps()
    if not names:
        say("No app has been deployed on this server yet.")
    rows = [app_status(App(name, cfg), args.last) for name in names]
    worst = max((live_state.HEALTH_CODES[r["health"]] for r in rows), default=0)
    Report.add(apps=rows, health=next(h for h, c in live_state.HEALTH_CODES.items() if c == worst))
    return worst


def app_status(app, last):
    """One app's status, said and returned as a dict (the JSON of status)."""
    st = app.state()
    state, why = live_state.health(app.kind, st, st["servers"])
    where = (
        f"live on {st['live']} ({st['current_version']})"
        if st["live"]
        else f"IN MAINTENANCE (maintenance off brings back {st['maintenance']}, {st['current_version']})"
        if st["maintenance"]
        else "DOWN: no colour is live"
    )
    say(f"{app.name}: {where}" + ("" if state == "healthy" else f" [{state.upper()}: {'; '.join(why)}]"))
    colours = {}
    for colour, c in st["colours"].items():
        srv = st["servers"].get(colour, {})
        run = "running" if c["running"] else ("stopped" if c["exists"] else "absent")
        if app.kind == "web":
            where = f"haproxy {srv.get('admin_state', '?')}/{srv.get('op_state', '?')}"
            where += f" sessions {srv.get('sessions', 0)}"
        else:
            where = f"worker ({app.settings.get('worker_order', 'start-first')})"
        say(f"  {colour:5} {c['version'] or '-':12} container {run:8} {where}")
        colours[colour] = dict(
            version=c["version"],
            container=run,
            health=c["health"],
            haproxy={k: srv[k] for k in ("admin_state", "op_state", "sessions") if k in srv} or None,
        )
    twins = [n for n in haproxy.live_servers(st["servers"]) if n.endswith(haproxy.FALLBACK_SUFFIX)]
    if twins:
        say(f"  backup server: {', '.join(twins)} (takes the traffic if the live colour fails)")
    holder = deploy_lock.read_holder(app.paths["lock"])
    if holder:
        say(f"  locked: {deploy_lock.describe(holder)}")
    target = releases.rollback_target(st["history"], st["current_version"])
    say(f"  rollback target: {target or 'none'}")
    shown = st["history"][-last:] if last > 0 else []
    for rel in shown:
        say(
            f"  {rel.get('time', '?'):20} {rel.get('action', '?'):8} {rel.get('version', '?'):12} "
            f"{rel.get('colour', ''):5}  by {rel.get('by', '?')}{window_text(rel.get('verification'))}"
        )
    # Releases the verification switched back never reach the history.
    backs = [line for line in release_log.read_audit(app.paths["audit_log"], 200) if " switch-back " in line]
    if backs:
        say(f"  last switched back: {backs[-1]}")
    return dict(
        app=app.name,
        kind=app.kind,
        health=state,
        reasons=why,
        live=st["live"] or None,
        maintenance=st["maintenance"] or None,
        version=st["current_version"] or None,
        colours=colours,
        backup_servers=twins,
        locked=deploy_lock.describe(holder) if holder else None,
        rollback_target=target or None,
        releases=shown,
        last_switch_back=backs[-1] if backs else None,
    )


def window_text(verification):
    """A release's verification window, as one short clause."""
    figures = (verification or {}).get("figures") or {}
    if not figures:
        return ""
    text = f"  window: {figures.get('requests', 0)} req, {figures.get('errors_5xx', 0)} 5xx"
    if figures.get("p95_ms") is not None:
        text += f", p95 {figures['p95_ms']} ms"
    steps = (verification or {}).get("steps") or []
    if steps:
        text += ", canary " + "/".join(str(s.get("percent")) for s in steps) + "/100 %"
    return text


def cmd_rollback(cfg, args):
    app = App(args.app, cfg)
    holder = app.lock(f"rollback{(' to ' + args.to) if args.to else ''}")
    try:
        st = app.state()
        if not st["live"]:
            raise Refused(
                f"{app.name} has no live colour (maintenance or down); use playbooks/rollback.yml. Nothing was changed."
            )
        target = args.to or releases.rollback_target(st["history"], st["current_version"])
        if not target:
            raise Refused(
                f"no release of {app.name} to go back to before {st['current_version']}. Nothing was changed."
            )
        idle = st["idle"]
        standby = st["colours"][idle]
        if standby["version"] == target and not standby["env_current"]:
            raise Refused(
                f"the standby colour {idle} runs {target} with an older environment than {app.name}'s env file "
                "(its database or Redis credentials, or a setting, changed since it started): switching to it "
                "would run it with those. Run playbooks/rollback.yml"
                f"{(' -e rollback_to=' + target) if args.to else ''} "
                "from a controller, which starts it again with the current one. Nothing was changed."
            )
        if app.kind == "worker":
            return rollback_worker(app, st, target)
        if not (standby["running"] and standby["version"] == target):
            raise Refused(
                f"the standby colour {idle} runs {standby['version'] or 'nothing'}"
                f"{'' if standby['running'] else ' (stopped)'}, not {target}: this needs the image started first. "
                f"Run playbooks/rollback.yml{(' -e rollback_to=' + target) if args.to else ''} from a controller. "
                "Nothing was changed."
            )
        t0 = time.monotonic()
        # No backup server behind the release rolled back to: the one
        # behind it would be the release rolled back from.
        result = app.switch([idle])
        return record_rollback(app, st, target, result["switch_ms"], time.monotonic() - t0, idle)
    finally:
        app.unlock(holder)


def record_rollback(app, st, target, switch_ms, seconds, how):
    """The rollback to the idle colour's release, in the history and the
    audit log as the playbooks write them (via=onebox), and said. HOW: the
    colour (and a worker's order) for the message."""
    idle = st["idle"]
    release = release_log.append_release(
        app.paths["releases"],
        {
            "action": "rollback",
            "version": target,
            "image": st["colours"][idle]["image"],
            # What the playbooks record too: the image ID, and the registry
            # digest this version was deployed from (a later rollback pulls it).
            "digest": st["colours"][idle]["image_id"],
            "repo_digest": releases.pinned_digest(st["history"], target),
            "colour": idle,
            "previous_colour": st["live"],
            "previous_version": st["current_version"],
            "switch_ms": switch_ms,
            "by": actor(),
            "via": "onebox",
        },
        warn,
    )
    app.audit("rollback-ok", f"from={st['current_version']} to={target} colour={idle} switch_ms={switch_ms} via=onebox")
    say(
        f"{app.name}: rolled back from {st['current_version']} to {target} ({how}) in {round(seconds, 3):g} s; "
        f"recorded at {release['time']}."
    )
    Report.add(
        app=app.name,
        action="rollback",
        previous_version=st["current_version"],
        version=target,
        colour=idle,
        switch_ms=switch_ms,
        seconds=round(seconds, 3),
        recorded_at=release["time"],
    )
    return 0


def docker_cli(args):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def rollback_worker(app, st, target):
    """Start the worker's stopped colour (the previous release) in place of
    the running one, in the app's order."""
    idle = st["idle"]
    standby = st["colours"][idle]
    if not (standby["exists"] and standby["version"] == target):
        raise Refused(
            f"{app.name}'s stopped container {standby['container']} holds {standby['version'] or 'nothing'}, "
            f"not {target}: run playbooks/rollback.yml from a controller. Nothing was changed."
        )
    t0 = time.monotonic()
    try:
        result = worker.release(
            docker_cli,
            standby["container"],
            st["colours"][st["live"]]["container"],
            app.settings.get("worker_order", "start-first"),
            int(app.settings.get("stop_timeout", 10)),
            float(app.cfg["health_timeout"]),
        )
    except worker.WorkerError as exc:
        app.audit("rollback-failed", f"to={target} via=onebox")
        raise Refused(f"{app.name}: {exc}") from None
    return record_rollback(app, st, target, result["switch_ms"], time.monotonic() - t0, f"{idle}, {result['order']}")


def cmd_maintenance(cfg, args):
    app = App(args.app, cfg)
    if app.kind == "worker":
        raise Refused(
            f"{app.name} is a worker: it serves no traffic, so it has no maintenance page. "
            f"Roll it back (onebox rollback {app.name}) or stop it (docker stop). Nothing was changed."
        )
    holder = app.lock(f"maintenance {args.mode}")
    try:
        st = app.state()
        if args.mode == "on":
            if st["maintenance"]:
                say(f"{app.name} is already in maintenance; nothing was changed.")
                Report.add(app=app.name, maintenance=True, changed=False)
                return 0
            if st["live"]:
                release_log.write_maintenance(app.maintenance_file, st["live"])
            app.switch([], inactive_state="maint", allow_empty=True)
            app.audit("maintenance-on", "via=onebox")
            say(
                f"{app.name}: in maintenance (the maintenance page shows); "
                f"'onebox maintenance {app.name} off' brings back {st['live'] or 'nothing'}."
            )
            Report.add(app=app.name, maintenance=True, changed=True, brings_back=st["live"] or None)
            return 0
        if not st["maintenance"]:
            say(f"{app.name} is not in maintenance ({st['live'] or 'no colour'} is live); nothing was changed.")
            Report.add(app=app.name, maintenance=False, changed=False)
            return 0
        app.switch([st["maintenance"]])
        release_log.clear_maintenance(app.maintenance_file)
        app.audit("maintenance-off", "via=onebox")
        say(f"{app.name}: back on {st['maintenance']} ({st['current_version']}).")
        Report.add(app=app.name, maintenance=False, changed=True, live=st["maintenance"], version=st["current_version"])
        return 0
    finally:
        app.unlock(holder)


def fallback_check(app, now):
    """(live colour, ready backup twins, the twin that may stay) of a web app."""
    servers = haproxy.describe_servers(app.client, app.paths["backend"])
    ready = haproxy.live_servers(servers)
    live = [n for n in ready if n in apps.COLOURS]
    twins = [n for n in ready if n.endswith(haproxy.FALLBACK_SUFFIX)]
    history = release_log.read_releases(app.paths["releases"], warn)
    seconds = float(app.settings.get("fallback_seconds", apps.DEFAULTS["fallback_seconds"]))
    allowed = releases.fallback_colour(history, live[0] if len(live) == 1 else "", now, seconds)
    return live, twins, haproxy.fallback_name(allowed) if allowed else ""


def cmd_fallbacks(cfg, args):
    """Take out every backup twin that may no longer stand behind the live
    colour (releases.fallback_colour: only the release a deploy just left,
    for the app's fallback_seconds after its switch). Run every 15 s by
    onebox-fallback.timer. An app whose deploy lock is held is left to the
    run that holds it. It does not take the lock itself (a deploy started
    in that instant would be refused): it only ever takes a backup server
    out, so a deploy that arms one in between loses at worst that one."""
    rc, taken = 0, {}
    for name in [args.app] if args.app else known_apps():
        app = App(name, cfg)
        if app.kind != "web" or deploy_lock.read_holder(app.paths["lock"]):
            continue
        try:
            live, twins, allowed = fallback_check(app, time.time())
            out = [t for t in twins if t != allowed]
            if not out or deploy_lock.read_holder(app.paths["lock"]):
                continue
            app.client.set_commands([f"set server {app.paths['backend']}/{t} state drain" for t in out])
            app.client.save_state(cfg["haproxy_state_file"])
        except haproxy.HAProxyError as exc:
            warn(f"{name}: {exc}")
            rc = 1
            continue
        app.audit("fallback-off", f"servers={','.join(out)} live={','.join(live) or '-'}")
        say(f"{name}: {', '.join(out)} no longer stands behind {', '.join(live) or 'no live colour'}")
        taken[name] = out
    Report.add(taken_out=taken)
    return rc


def write_textfile(directory, name, text):
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def all_containers():
    """`docker container inspect` of every container on the server."""
    rc, out, err = docker_cli(["ps", "-aq"])
    ids = out.split()
    if rc != 0:
        raise Refused(f"docker ps failed: {err.strip()[:200]}")
    if not ids:
        return []
    _rc, out, err = docker_cli(["container", "inspect", *ids])
    try:
        return json.loads(out or "[]")
    except ValueError:
        raise Refused(f"docker container inspect failed: {err.strip()[:200]}") from None


def fail2ban_status():
    """{jail: `fail2ban-client status JAIL`}; {} without fail2ban."""

    def client(*args):
        try:
            proc = subprocess.run(["fail2ban-client", *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    overview = client("status")
    if overview is None:
        return {}
    out = {}
    for jail in live_state.fail2ban_jails(overview):
        text = client("status", jail)
        if text is not None:
            out[jail] = text
    return out


def cmd_metrics(cfg, args):
    """For node_exporter's textfile directory (a timer runs it every 30 s):
    onebox_app_up of every app, the state of every container, fail2ban's
    bans. Nothing when that directory does not exist (no monitoring)."""
    if not os.path.isdir(args.textfile_dir):
        Report.add(written=[], note=f"{args.textfile_dir} does not exist (no monitoring)")
        return 0
    rows = []
    for name in known_apps():
        app = App(name, cfg)
        rows.append((name, app.kind, docker_colours(name)))
    write_textfile(args.textfile_dir, "onebox_apps.prom", live_state.metrics(rows))
    write_textfile(args.textfile_dir, "onebox_containers.prom", live_state.container_metrics(all_containers()))
    write_textfile(args.textfile_dir, "onebox_fail2ban.prom", live_state.fail2ban_metrics(fail2ban_status()))
    Report.add(written=[f"{args.textfile_dir}/onebox_{n}.prom" for n in ("apps", "containers", "fail2ban")])
    return 0


def cmd_logs(cfg, args):
    """The live colour's container logs (docker logs), or --colour's."""
    app = App(args.app, cfg)
    st = app.state()
    colour = args.colour or st["current"]
    if not colour:
        raise Refused(f"{app.name} has no live colour: name one with --colour blue|green")
    container = st["colours"][colour]["container"]
    if not st["colours"][colour]["exists"]:
        raise Refused(f"{app.name}'s {colour} container {container} does not exist")
    argv = ["docker", "logs", "--tail", str(args.tail), "--timestamps"] + (["--follow"] if args.follow else [])
    if Report.as_json:
        if args.follow:
            raise Refused("--follow streams the logs: it takes no --json (leave one out)")
        proc = subprocess.run([*argv, container], capture_output=True, text=True, check=False)
        Report.add(app=app.name, colour=colour, container=container, lines=(proc.stdout + proc.stderr).splitlines())
        return 0 if proc.returncode == 0 else 2
    sys.stdout.flush()
    try:
        return 0 if subprocess.run([*argv, container], check=False).returncode == 0 else 2
    except KeyboardInterrupt:
        return 0


# Exit codes a script can use: 0 healthy or done, 1 degraded (status), 2
# down, refused or failed.
REFUSED = 2


def parser():
    # --json before or after the command (SUPPRESS: a subcommand's default
    # does not undo the top level's).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object on stdout")
    top = argparse.ArgumentParser(
        prog="onebox",
        description="The incident path on the server (same engine, lock and history as the playbooks).",
        epilog="Exit codes: 0 healthy or done, 1 degraded (status), 2 down, refused or failed.",
    )
    top.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", parents=[common], help="live colour, versions, lock and the last releases of each app")
    p.add_argument("app", nargs="?")
    p.add_argument("--last", type=int, default=5)
    p = sub.add_parser("rollback", parents=[common], help="switch back to the standby colour's release (one switch)")
    p.add_argument("app")
    p.add_argument("--to", help="the version to go back to (default: the previous good release)")
    p = sub.add_parser("maintenance", parents=[common], help="show the maintenance page, or bring the release back")
    p.add_argument("app")
    p.add_argument("mode", choices=["on", "off"])
    p = sub.add_parser("logs", parents=[common], help="the live colour's container logs")
    p.add_argument("app")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--tail", type=int, default=100, help="lines from the end (default 100)")
    p.add_argument("--colour", choices=list(apps.COLOURS), help="another colour's logs (the standby)")
    p = sub.add_parser(
        "fallbacks",
        parents=[common],
        help="take out backup servers past their time (onebox-fallback.timer runs it every 15 s)",
    )
    p.add_argument("app", nargs="?")
    p = sub.add_parser(
        "metrics", parents=[common], help="app, container and fail2ban metrics for node_exporter's textfile collector"
    )
    p.add_argument("--textfile-dir", default="/var/lib/prometheus/node-exporter")
    return top


COMMANDS = {
    "status": cmd_status,
    "rollback": cmd_rollback,
    "maintenance": cmd_maintenance,
    "logs": cmd_logs,
    "fallbacks": cmd_fallbacks,
    "metrics": cmd_metrics,
}


def main(argv=None):
    args = parser().parse_args(argv)
    Report.as_json, Report.data = bool(args.json), {}
    if os.geteuid() != 0:
        return fail("run it as root (sudo onebox ...).")
    try:
        if args.command in ("rollback", "maintenance"):
            actor()  # these write the audit log: a forged name stops them before the lock
        rc = COMMANDS[args.command](settings(), args)
    except Refused as exc:
        return fail(str(exc), refused=True)
    except (haproxy.HAProxyError, release_log.ReleaseLogError, OSError) as exc:
        return fail(str(exc))
    if Report.as_json:
        print(json.dumps(dict(Report.data, ok=rc == 0, exit_code=rc), sort_keys=True))
    return rc


def fail(message, refused=False):
    """Say why on stderr (and, with --json, in the object on stdout); exit 2."""
    print(f"onebox: {message}", file=sys.stderr)
    if Report.as_json:
        facts = dict(Report.data, ok=False, exit_code=REFUSED, error=message, refused=refused)
        print(json.dumps(facts, sort_keys=True))
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
