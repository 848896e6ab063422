# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which colour of an app is live, current (live, or what maintenance=off
brings back) and idle, from HAProxy's live servers and `docker container
inspect`. The app_state module and the on-server ``onebox`` program decide
it here. Standard library only."""

from __future__ import annotations


def env_file_lines(text):
    """The KEY=VALUE lines of an env file as `docker --env-file` reads them
    (blank lines and comments left out): what a container started from it
    has in its Config.Env."""
    return [line for line in (text or "").splitlines() if line.strip() and not line.startswith("#") and "=" in line]


def read_env_file(path):
    """env_file_lines of the env file at PATH, or None when there is none
    (nothing known to compare with)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return env_file_lines(fh.read())
    except FileNotFoundError:
        return None


def colour_info(name, container, env=None):
    """What a colour's container runs, from its `docker container inspect`
    object (None when the container does not exist). ENV: the lines of the
    app's env file as it is now (env_file_lines), when known: env_current
    says whether the container was started with every one of them (False:
    it runs with older credentials or settings, so it is no release to
    switch back to as it is)."""
    if not container:
        return dict(
            exists=False, running=False, version="", image="", image_id="", health="", container=name, env_current=False
        )
    config = container.get("Config") or {}
    state = container.get("State") or {}
    return dict(
        exists=True,
        running=bool(state.get("Running")),
        # Docker's health check: healthy, starting, unhealthy, or "" without one.
        health=(state.get("Health") or {}).get("Status", "") if state.get("Running") else "",
        version=(config.get("Labels") or {}).get("onebox_version", ""),
        image=config.get("Image", ""),
        # The image's ID (sha256:...), what the release history records as its digest.
        image_id=container.get("Image", ""),
        container=name,
        env_current=env is None or set(env) <= set(config.get("Env") or []),
    )


def resolve(order, active, colours, read_maintenance):
    """live, maintenance, current and idle colour. ORDER: the colours; ACTIVE:
    HAProxy's live servers; COLOURS: colour_info by colour. The live colour is
    an active one whose container runs; only without one is the maintenance
    file read (READ_MAINTENANCE(), the colour maintenance=off brings back)."""
    live = next((c for c in order if c in active and colours[c]["running"]), "")
    maintenance = "" if live else read_maintenance()
    current = live or maintenance
    return dict(
        live=live,
        maintenance=maintenance,
        current=current,
        idle=next(c for c in order if c != current),
        current_version=colours[current]["version"] if current else "",
    )


# What `onebox status` exits with, by the worst app: what a script or a
# monitoring check can act on.
HEALTH_CODES = {"healthy": 0, "degraded": 1, "down": 2}


def health(kind, state, servers=None):
    """(healthy | degraded | down, reasons) of one app. KIND: web or worker;
    STATE: resolve()'s result with its colours; SERVERS: describe_servers of
    a web app's backend (name -> admin_state, op_state). Down: nothing serves
    (no live colour and no maintenance page, or the live colour's container
    or HAProxy server is down with no backup server up). Degraded: it serves,
    but not as deployed (the maintenance page, a backup server carrying the
    traffic, a live container that is unhealthy)."""
    live = state.get("live")
    if not live:
        if kind == "web" and state.get("maintenance"):
            return "degraded", ["in maintenance: the maintenance page shows"]
        return "down", ["no colour is live"]
    unhealthy = state["colours"][live].get("health") == "unhealthy"
    why = [f"{live}'s container is unhealthy (its Docker health check)"] if unhealthy else []
    if kind != "web":
        return ("degraded" if why else "healthy"), why
    servers = servers or {}
    if (servers.get(live) or {}).get("op_state") != "down":
        return ("degraded" if why else "healthy"), why
    twins = [
        n
        for n, s in servers.items()
        if n.endswith("_fallback") and s.get("admin_state") == "ready" and s.get("op_state") != "down"
    ]
    if twins:
        return "degraded", [*why, f"HAProxy has {live} down: the backup server {', '.join(twins)} takes the traffic"]
    return "down", [*why, f"HAProxy has {live} down (its health checks fail) and no backup server is up"]


def metrics(apps):
    """Prometheus text (node_exporter's textfile collector) of APPS, a list
    of (name, kind, colours): onebox_app_up is 1 while a container of the
    app runs and is not unhealthy. Workers have no HAProxy backend, so this
    is what says a worker is down (the AppDown alert)."""
    lines = [
        "# HELP onebox_app_up 1 while a container of the app runs and is not unhealthy.",
        "# TYPE onebox_app_up gauge",
    ]
    for name, kind, colours in apps:
        up = any(c["running"] and c.get("health") != "unhealthy" for c in colours.values())
        lines.append(f'onebox_app_up{{app="{name}",kind="{kind}"}} {1 if up else 0}')
    return "\n".join(lines) + "\n"


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def container_metrics(inspected):
    """Prometheus text of every container on the server, from `docker
    container inspect` of each: whether it runs, is unhealthy (its health
    check fails) or is restarting, and how often its restart policy has
    restarted it (alerts ContainerUnhealthy, ContainerRestarting)."""
    metrics_help = {
        "running": ("gauge", "1 while the container runs."),
        "unhealthy": ("gauge", "1 while the container runs and its health check fails."),
        "restarting": ("gauge", "1 while Docker is restarting the container after a crash."),
        "restarts_total": ("counter", "Restarts by the container's restart policy."),
    }
    samples = {metric: [] for metric in metrics_help}
    for c in sorted(inspected or [], key=lambda c: c.get("Name", "")):
        name = _label(c.get("Name", "").lstrip("/"))
        state = c.get("State") or {}
        running = bool(state.get("Running"))
        health = (state.get("Health") or {}).get("Status")
        values = {
            "running": int(running),
            "unhealthy": int(running and health == "unhealthy"),
            "restarting": int(bool(state.get("Restarting"))),
            "restarts_total": int(c.get("RestartCount") or 0),
        }
        for metric, value in values.items():
            samples[metric].append(f'onebox_container_{metric}{{name="{name}"}} {value}')
    lines = []
    for metric, (kind, text) in metrics_help.items():
        lines += [f"# HELP onebox_container_{metric} {text}", f"# TYPE onebox_container_{metric} {kind}"]
        lines += samples[metric]
    return "\n".join(lines) + "\n"


def fail2ban_jails(status_text):
    """The jail names of `fail2ban-client status`."""
    for line in status_text.splitlines():
        if "Jail list:" in line:
            return [j.strip() for j in line.split("Jail list:", 1)[1].split(",") if j.strip()]
    return []


def fail2ban_metrics(jail_status):
    """Prometheus text from `fail2ban-client status JAIL` of each jail
    (``jail_status``: jail -> text): addresses banned now and in all
    (alert Fail2banBanRateHigh on the rate of the total)."""
    lines = [
        "# HELP onebox_fail2ban_banned Addresses fail2ban bans now.",
        "# TYPE onebox_fail2ban_banned gauge",
    ]
    totals = []
    for jail in sorted(jail_status):
        now = total = None
        for line in jail_status[jail].splitlines():
            key, _sep, value = line.partition(":")
            key = key.strip("|`- \t")
            if key == "Currently banned":
                now = int(value.strip() or 0)
            elif key == "Total banned":
                total = int(value.strip() or 0)
        if now is None or total is None:
            continue
        lines.append(f'onebox_fail2ban_banned{{jail="{_label(jail)}"}} {now}')
        totals.append(f'onebox_fail2ban_banned_total{{jail="{_label(jail)}"}} {total}')
    lines += [
        "# HELP onebox_fail2ban_banned_total Bans since fail2ban started.",
        "# TYPE onebox_fail2ban_banned_total counter",
        *totals,
    ]
    return "\n".join(lines) + "\n"
