# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one model of what runs on the server: ``onebox_apps``.

Every role and playbook derives what it needs about an app from here (the
HAProxy backend and server names, the host ports of the two colours, the
container names, the state, config and backup directories), so a name is
spelled once. ``normalize`` checks a whole model and refuses a bad one with
one line per mistake; an inventory with the old single-app variables
(``app_name``, ``app_image``...) is read as one app by ``from_legacy``.
"""

from __future__ import annotations

import re
import zlib

KINDS = ("web", "worker")
COLOURS = ("blue", "green")
# Docker container names, HAProxy backend names and directory names alike.
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,39}$")
# A PostgreSQL database name the roles can pass unquoted.
DATABASE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")
DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Host ports of the colours when the model names none: stable per app name
# (inserting an app never moves another's ports), in 20000-27999, loopback only.
PORT_BASE = 20000
PORT_SLOTS = 4000
WORKER_ORDERS = ("start-first", "stop-first")

STATE_ROOT = "/var/lib/onebox"
CONFIG_ROOT = "/etc/onebox"
BACKUP_ROOT = "/var/backups/onebox"

DEFAULTS = {
    "kind": "web",
    "domains": [],
    "container_port": 8080,
    "health_path": None,
    "version_field": "version",
    "env": {},
    "secret_env": {},
    "memory": "512m",
    "cpus": 1.0,
    "stop_timeout": 10,
    "migration_command": "",
    "database": "",
    "verify_seconds": 10,
    "verify_interval": 0.5,
    "drain_timeout": 30,
    "keep_releases": 5,
    "worker_order": "start-first",
    # The container's command (the image's CMD when empty): a worker is often
    # the web app's image with another command.
    "command": "",
    # A Docker health check command run in the container (the image's
    # HEALTHCHECK when empty); a worker deploy waits for it.
    "healthcheck": "",
    "blue_port": None,
    "green_port": None,
    "maintenance_html": None,
    # Verification on real traffic (module_utils/verify, traffic): paths the
    # release must answer before and after the switch, the gates of the
    # window, and canary steps in percent ([10, 50, 100]; [] switches at once).
    "smoke_checks": [],
    "verify_max_error_rate": 0.01,
    "verify_min_requests": 20,
    "verify_latency_factor": 2.0,
    "verify_latency_floor_ms": 100,
    # Requests not judged: long polls and streams, slow by design ("/events/*").
    "verify_skip_paths": [],
    "rollout_steps": [],
    "rollout_hold": 30,
    # A cookie keeps each visitor on one colour while a canary runs.
    "rollout_sticky": False,
    # Named Docker volumes the app keeps its files in (uploads): {NAME: path
    # in the container}. Both colours mount them; backups copy them
    # (volume_name gives the Docker name).
    "volumes": {},
}
# "domain" (one) is read as "domains" (a list), as the haproxy role took it.
# "derived" is recomputed: a checked model can be checked again (a role given
# the model another role produced).
KNOWN = set(DEFAULTS) | {"name", "image", "domain", "derived"}


class ModelError(ValueError):
    """A bad model; the message lists every mistake, one per line."""


def backend_name(name):
    """The HAProxy backend of app NAME."""
    return f"app_{name}"


def volume_name(app_name, volume):
    """The Docker volume of VOLUME (a key of an app's ``volumes``) of APP_NAME."""
    return f"onebox_{app_name}_{volume}"


def derived_ports(name):
    """(blue, green) host ports for an app whose model names none."""
    slot = zlib.crc32(name.encode()) % PORT_SLOTS
    return PORT_BASE + 2 * slot, PORT_BASE + 2 * slot + 1


def paths(name):
    """The names and places of app NAME that do not depend on its settings."""
    return {
        "backend": backend_name(name),
        "servers": list(COLOURS),
        "state_dir": f"{STATE_ROOT}/{name}",
        "config_dir": f"{CONFIG_ROOT}/{name}",
        "backup_dir": f"{BACKUP_ROOT}/{name}",
        "lock": f"{STATE_ROOT}/{name}/deploy.lock",
        "releases": f"{STATE_ROOT}/{name}/releases.jsonl",
        "audit_log": f"{STATE_ROOT}/{name}/audit.log",
        "maintenance_file": f"{STATE_ROOT}/{name}/maintenance-colour",
        # What the on-server onebox program needs of the app (no secrets).
        "settings": f"{CONFIG_ROOT}/{name}/app.json",
        "network": f"onebox_{name}",
    }


def derive(app):
    """What every role needs about APP (a normalized entry), derived once."""
    name = app["name"]
    out = paths(name)
    # A worker has the two colours too: the running one and the stopped one
    # holding the previous version (a rollback starts it again).
    out["containers"] = {c: f"{name}-{c}" for c in COLOURS}
    out["ports"] = {"blue": app["blue_port"], "green": app["green_port"]} if app["kind"] == "web" else {}
    # Docker volume name -> path in the container.
    out["volumes"] = {volume_name(name, v): path for v, path in sorted((app.get("volumes") or {}).items())}
    return out


def _port(value, where, errors):
    try:
        port = int(value)
    except (TypeError, ValueError):
        errors.append(f"{where} must be a port number from 1 to 65535, not {value!r}")
        return None
    if not 1 <= port <= 65535:
        errors.append(f"{where} must be a port number from 1 to 65535, not {port}")
        return None
    return port


def _one(raw, index, errors, need_image=True):
    where = f"onebox_apps[{index}]"
    if not isinstance(raw, dict):
        errors.append(f"{where} must be a mapping (name, image, kind...), not {type(raw).__name__}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        errors.append(
            f"{where}.name {name!r} must be letters, digits, _ and -, starting with a letter or digit (at most 40)"
        )
        return None
    where = f"app '{name}'"
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        errors.append(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})")
    app = dict(DEFAULTS)
    app.update({k: v for k, v in raw.items() if k in KNOWN and k not in ("domain", "derived")})
    if raw.get("domain") and not raw.get("domains"):
        app["domains"] = [raw["domain"]]
    if need_image and (not app.get("image") or not isinstance(app["image"], str)):
        errors.append(f"{where}: image is required (the repository, without a tag)")
    app.setdefault("image", "")
    if app["kind"] not in KINDS:
        errors.append(f"{where}: kind {app['kind']!r} is unknown; use web or worker")
        return app
    domains = app["domains"]
    if isinstance(domains, str):
        domains = [domains]
    app["domains"] = [str(d).lower() for d in domains or []]
    for d in app["domains"]:
        if not DOMAIN.match(d):
            errors.append(f"{where}: domain {d!r} is not a host name")
    if app["kind"] == "worker":
        if app["domains"]:
            errors.append(f"{where}: a worker serves no HTTP, so it takes no domains (make it kind: web, or drop them)")
        if app["worker_order"] not in WORKER_ORDERS:
            errors.append(f"{where}: worker_order {app['worker_order']!r} is unknown; use start-first or stop-first")
        app["blue_port"] = app["green_port"] = None
        app["health_path"] = None
    else:
        if not app["domains"]:
            errors.append(f"{where}: a web app needs at least one domain (domains: [example.com])")
        hp = app["health_path"]
        if not isinstance(hp, str) or not hp.startswith("/"):
            errors.append(f"{where}: a web app needs health_path, a path starting with / (for example /health)")
        blue, green = derived_ports(name)
        for colour, port in (("blue", blue), ("green", green)):
            given = app[f"{colour}_port"]
            app[f"{colour}_port"] = _port(port if given is None else given, f"{where}: {colour}_port", errors)
        app["container_port"] = _port(app["container_port"], f"{where}: container_port", errors)
    if app["database"] and (not isinstance(app["database"], str) or not DATABASE.match(app["database"])):
        errors.append(f"{where}: database {app['database']!r} must be letters, digits and _ (a PostgreSQL name)")
    for key in ("command", "healthcheck"):
        if not isinstance(app[key], (str, list)):
            errors.append(f"{where}: {key} must be a command, as a string or a list of words")
    for key in ("env", "secret_env"):
        if not isinstance(app[key], dict):
            errors.append(f"{where}: {key} must be a mapping of NAME: value")
    volumes = app["volumes"]
    if not isinstance(volumes, dict):
        errors.append(
            f"{where}: volumes must be a mapping of NAME: /path/in/container, such as {{uploads: /app/uploads}}"
        )
        app["volumes"] = {}
    else:
        for vol, path in volumes.items():
            if not isinstance(vol, str) or not NAME.match(vol):
                errors.append(f"{where}: volume name {vol!r} must be letters, digits, _ and -")
            if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
                errors.append(
                    f"{where}: volume {vol!r} needs an absolute path in the container other than /, not {path!r}"
                )
    floats = (
        "verify_interval",
        "verify_max_error_rate",
        "verify_latency_factor",
        "verify_latency_floor_ms",
        "rollout_hold",
    )
    for key in floats + ("verify_seconds", "drain_timeout", "stop_timeout", "keep_releases", "verify_min_requests"):
        try:
            app[key] = float(app[key]) if key in floats else int(app[key])
        except (TypeError, ValueError):
            errors.append(f"{where}: {key} must be a number, not {app[key]!r}")
    _verification(app, where, errors)
    return app


def rollout_steps(steps):
    """[10, 50, 100] -> [10, 50]: the shares before the full switch. Raise
    ValueError unless they rise from 1 to 99 (a last 100 is the switch)."""
    if not isinstance(steps, list):
        raise ValueError(f"rollout_steps must be a list of percentages such as [10, 50, 100], not {steps!r}")
    try:
        out = [int(s) for s in steps]
    except (TypeError, ValueError):
        raise ValueError(f"rollout_steps must be whole percentages such as [10, 50, 100], not {steps!r}") from None
    if out and out[-1] == 100:
        out = out[:-1]
    if any(not 1 <= s <= 99 for s in out) or out != sorted(set(out)):
        raise ValueError(f"rollout_steps must rise from 1 to 100 percent, such as [10, 50, 100], not {steps!r}")
    return out


def _verification(app, where, errors):
    from .verify import normalize_checks

    if app["kind"] == "worker":
        for key in ("smoke_checks", "rollout_steps", "rollout_sticky", "verify_skip_paths"):
            if app[key]:
                errors.append(f"{where}: a worker serves no HTTP, so it takes no {key}")
        return
    try:
        normalize_checks(app["smoke_checks"] if isinstance(app["smoke_checks"], list) else [app["smoke_checks"]])
    except ValueError as exc:
        errors.append(f"{where}: {exc}")
    try:
        app["rollout_steps"] = rollout_steps(app["rollout_steps"])
    except ValueError as exc:
        errors.append(f"{where}: {exc}")
    skip = app["verify_skip_paths"]
    if not isinstance(skip, list) or not all(isinstance(x, str) and x.startswith("/") for x in skip):
        errors.append(f"{where}: verify_skip_paths must be a list of paths starting with / (a trailing * is a prefix)")
    if not isinstance(app["rollout_sticky"], bool):
        errors.append(f"{where}: rollout_sticky must be true or false, not {app['rollout_sticky']!r}")
    rate = app["verify_max_error_rate"]
    if isinstance(rate, float) and not 0 <= rate < 1:
        errors.append(f"{where}: verify_max_error_rate is a share from 0 to 1 (0.01 is 1 %), not {rate}")


def normalize(apps, reserved_ports=(), need_image=True):
    """Check and complete a list of apps; every entry gets the defaults and
    ``derived``. Raises ModelError listing every mistake. RESERVED_PORTS
    (host ports something else on the server uses) must not be taken.
    NEED_IMAGE=False: for routing only (the haproxy role alone)."""
    if apps is None:
        apps = []
    if not isinstance(apps, list):
        raise ModelError(f"onebox_apps must be a list of apps, not {type(apps).__name__}")
    errors = []
    out = [_one(raw, i, errors, need_image) for i, raw in enumerate(apps)]
    out = [a for a in out if a is not None]
    seen_names, seen_domains, seen_ports = {}, {}, {p: "reserved" for p in reserved_ports}
    for app in out:
        name = app["name"]
        if name in seen_names:
            errors.append(f"two apps are named '{name}'; names must be unique")
        seen_names[name] = True
        for d in app["domains"]:
            if d in seen_domains and seen_domains[d] != name:
                errors.append(f"domain {d} is claimed by both '{seen_domains[d]}' and '{name}'")
            seen_domains[d] = name
        for colour in COLOURS:
            port = app.get(f"{colour}_port")
            if port is None:
                continue
            if port in seen_ports:
                errors.append(
                    f"app '{name}': {colour}_port {port} is already used by {seen_ports[port]}; "
                    f"set blue_port/green_port for '{name}' to free ports"
                )
            seen_ports[port] = f"'{name}' ({colour})"
    if errors:
        raise ModelError("\n".join(errors))
    for app in out:
        app["derived"] = derive(app)
    return out


LEGACY = {
    "app_image": "image",
    "app_container_port": "container_port",
    "app_blue_port": "blue_port",
    "app_green_port": "green_port",
    "app_health_path": "health_path",
    "app_version_json_path": "version_field",
    "app_env": "env",
    "app_secret_env": "secret_env",
    "app_memory": "memory",
    "app_cpus": "cpus",
    "app_stop_timeout": "stop_timeout",
    "app_migration_command": "migration_command",
    "app_verify_seconds": "verify_seconds",
    "app_verify_interval": "verify_interval",
    "app_drain_timeout": "drain_timeout",
    "app_keep_releases": "keep_releases",
    "app_smoke_checks": "smoke_checks",
    "app_verify_max_error_rate": "verify_max_error_rate",
    "app_verify_min_requests": "verify_min_requests",
    "app_verify_latency_factor": "verify_latency_factor",
    "app_verify_latency_floor_ms": "verify_latency_floor_ms",
    "app_verify_skip_paths": "verify_skip_paths",
    "app_rollout_steps": "rollout_steps",
    "app_rollout_hold": "rollout_hold",
    "app_rollout_sticky": "rollout_sticky",
    "app_volumes": "volumes",
}
# What the app role's defaults gave a single-app inventory.
LEGACY_DEFAULTS = {
    "name": "app",
    "domains": ["localhost"],
    "health_path": "/health",
    "blue_port": 18001,
    "green_port": 18002,
}


# Per-app variables that, next to onebox_apps, would apply to every app.
MIXED = ("app_name", "app_domain", "app_database_container", *LEGACY)


def refuse_mixed(variables):
    """A model (onebox_apps) and the old single-app variables at once are refused."""
    found = [k for k in MIXED if variables.get(k) not in (None, "", [], {})]
    if found:
        raise ModelError(
            f"this inventory sets onebox_apps and the old single-app variable(s) {', '.join(found)}, "
            "which would apply to every app: move them into the app entries (name, image, domains, "
            "database...) and remove them. Nothing was changed."
        )


def from_legacy(variables):
    """One app from the old single-app variables (app_name, app_image...),
    with the defaults those variables had; [] when there is no app_image."""
    if not variables.get("app_image"):
        return []
    app = dict(LEGACY_DEFAULTS)
    if variables.get("app_name"):
        app["name"] = variables["app_name"]
    if variables.get("app_domain"):
        app["domains"] = [variables["app_domain"]]
    for old, new in LEGACY.items():
        if variables.get(old) is not None and variables.get(old) != "":
            app[new] = variables[old]
    if variables.get("app_database_container"):
        app["database"] = variables.get("app_database_name") or app["name"]
    return [app]


def select(apps, wanted):
    """The apps a run works on: WANTED is one name, 'all', or a list of
    names (in the model's order for 'all'). Raises ModelError for a name
    the model does not have."""
    names = [a["name"] for a in apps]
    if wanted in (None, "", "all"):
        return list(apps)
    wanted = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ModelError(
            f"-e app={','.join(unknown)} names no app of this inventory; its apps are: {', '.join(names) or 'none'}"
        )
    return [a for a in apps if a["name"] in wanted]


def tls_probe_targets(app_list, https_port=443):
    """The URLs blackbox_exporter probes to read each served certificate:
    every domain of every web app, on its health path (left out of the
    deploy's traffic figures), once each."""
    out = []
    for app in app_list or []:
        if app.get("kind", "web") != "web":
            continue
        path = app.get("health_path") or "/"
        for domain in app.get("domains") or ([app["domain"]] if app.get("domain") else []):
            port = "" if int(https_port) == 443 else f":{int(https_port)}"
            url = f"https://{domain}{port}{path}"
            if url not in out:
                out.append(url)
    return out
