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
        return dict(exists=False, running=False, version="", image="", image_id="", container=name)
    config = container.get("Config") or {}
    return dict(
        exists=True,
        running=bool((container.get("State") or {}).get("Running")),
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
