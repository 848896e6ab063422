# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's daemon.json, decided once: the collection's defaults with
the inventory's options merged over them, and never a storage driver other
than the one that holds a running engine's images and containers.

A restart with another storage driver hides every image and container the
engine has (they stay on disk, in the old driver's directory): the engine
then knows none of the apps it serves, and live-restore cannot help. Docker
never picks vfs by itself, even where it holds everything, so an inventory
that stops naming vfs would do just that. Standard library only."""

from __future__ import annotations

import json

DRIVER = "storage-driver"


class DaemonConfigError(ValueError):
    pass


def merge(base, over):
    """BASE with OVER merged into it, dictionaries key by key (as Ansible's
    combine(recursive=True))."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_current(text):
    """The daemon.json on the server as a dict ({} when absent or not JSON)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def config(defaults, options, current=None, engine=None):
    """daemon.json for DEFAULTS and OPTIONS, given the CURRENT file's text
    and ENGINE (`docker info` of the running engine: Driver, Images,
    Containers; empty when it does not run). Returns {"config", "warnings"};
    raises DaemonConfigError, before anything changes, for a storage driver
    that would hide what the engine holds."""
    result = merge(defaults or {}, options or {})
    engine = engine or {}
    running = engine.get("Driver") or ""
    held = int(engine.get("Images") or 0) + int(engine.get("Containers") or 0)
    wanted = result.get(DRIVER)
    warnings = []
    if not running or not held:
        return {"config": result, "warnings": warnings}
    if wanted and wanted != running:
        raise DaemonConfigError(
            f"docker_daemon_options sets {DRIVER} {wanted}, but this engine keeps its {engine.get('Images', 0)} "
            f"images and {engine.get('Containers', 0)} containers in {running}: restarted with {wanted} it would "
            f"know none of them and stop serving the apps. Set {DRIVER}: {running} (or leave it out where "
            f"daemon.json does not name one), or move the apps to a new server. Nothing was changed."
        )
    named = parse_current(current).get(DRIVER)
    if not wanted and named == running:
        result[DRIVER] = running
        warnings.append(
            f"daemon.json keeps {DRIVER} {running}, which it names today and the inventory no longer does: "
            f"this engine's images and containers are there (Docker would not pick {running} again by itself). "
            f"Set docker_daemon_options {DRIVER}: {running} to say so, or move the apps to a new server to "
            f"change it."
        )
    return {"config": result, "warnings": warnings}
