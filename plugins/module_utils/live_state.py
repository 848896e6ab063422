# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which colour of an app is live, current (live, or what maintenance=off
brings back) and idle, from HAProxy's live servers and `docker container
inspect`. The app_state module and the on-server ``onebox`` program decide
it here. Standard library only."""

from __future__ import annotations


def colour_info(name, container):
    """What a colour's container runs, from its `docker container inspect`
    object (None when the container does not exist)."""
    if not container:
        return dict(exists=False, running=False, version="", image="", image_id="", health="", container=name)
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
