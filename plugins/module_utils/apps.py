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
from urllib.parse import quote

KINDS = ("web", "worker")
COLOURS = ("blue", "green")
# Docker container names, HAProxy backend names and directory names alike.
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,39}$")
# A PostgreSQL database name the roles can pass unquoted.
DATABASE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")
# Control characters (a newline above all) in a string that reaches a file,
# a command line or haproxy.cfg would add a line of the attacker's choosing.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where a multi-line text is the point (an HTML page): tab and line ends only.
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TEXT_KEYS = ("maintenance_html",)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The login role postgres_exporter reads the shared PostgreSQL with
# (pg_monitor, no superuser: the superuser cannot log in over the network),
# its password generated once on the server in a root-only file.
MONITOR_ROLE = "onebox_monitor"
# Databases and roles that are PostgreSQL's own, or ours: never an app's.
RESERVED_DATABASES = ("postgres", "template0", "template1", MONITOR_ROLE)
DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Host ports of the colours when the model names none: stable per app name
# (inserting an app never moves another's ports), in 20000-27999, loopback only.
PORT_BASE = 20000
PORT_SLOTS = 4000
WORKER_ORDERS = ("start-first", "stop-first")

STATE_ROOT = "/var/lib/onebox"
# The shared PostgreSQL container when the inventory names none (the
# postgres role's postgres_container; the old single-app variables: APP-postgres).
SHARED_POSTGRES = "app-postgres"
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
    # After a deploy's switch, the release it left stays HAProxy's backup
    # server behind the new one for this long (a crash falls back to it at
    # once); 0: never. Never after a rollback or a switch back
    # (releases.fallback_colour; onebox fallbacks takes it out).
    "fallback_seconds": 300,
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
    # Where its database lives: "" is the shared PostgreSQL (the postgres
    # role's container); another name is a PostgreSQL of the app's own, which
    # the postgres role runs on the app's network only.
    "database_container": "",
    # The password of the app's own login role (Vault); "" generates one on
    # the server once and keeps it there (0600).
    "database_password": "",
    # true: a Redis of the app's own (on its network only), reached as
    # REDIS_URL with a user and password of its own; the name of another app
    # with redis: true: that app's Redis, with a user of its own (a worker
    # sharing its web app's queues). The old single-app variables:
    # postgres_redis_enabled.
    "redis": False,
    "redis_password": "",
}
# Secrets of the model: never shown.
SECRET_KEYS = ("secret_env", "database_password", "redis_password")
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
        # Its environment (docker --env-file, secrets: root only).
        "env_file": f"{CONFIG_ROOT}/{name}/app.env",
        "network": f"onebox_{name}",
    }


def derive(app, shared_postgres=SHARED_POSTGRES, redis_container=None):
    """What every role needs about APP (a normalized entry), derived once.
    SHARED_POSTGRES: the shared PostgreSQL container's name; REDIS_CONTAINER:
    the old single-app Redis container, kept for that app."""
    name = app["name"]
    out = paths(name)
    # A worker has the two colours too: the running one and the stopped one
    # holding the previous version (a rollback starts it again).
    out["containers"] = {c: f"{name}-{c}" for c in COLOURS}
    out["ports"] = {"blue": app["blue_port"], "green": app["green_port"]} if app["kind"] == "web" else {}
    # Docker volume name -> path in the container.
    out["volumes"] = {volume_name(name, v): path for v, path in sorted((app.get("volumes") or {}).items())}
    out["database"] = database_names(app, shared_postgres) if app.get("database") else None
    out["redis"] = redis_names(name, app.get("redis"), redis_container) if app.get("redis") else None
    return out


def database_names(app, shared_postgres=SHARED_POSTGRES):
    """Where app APP's database lives and how it is reached: its login role
    (named after the database: apps sharing a database share its role), the
    file on the server holding that role's password, the container (the
    shared PostgreSQL unless the app has its own) and, for a container of
    its own, its volume and environment file."""
    db = app["database"]
    container = app.get("database_container") or shared_postgres
    own = container != shared_postgres
    return {
        "name": db,
        "role": db,
        "container": container,
        "own": own,
        "host": "postgres",
        "password_file": f"{CONFIG_ROOT}/postgres/{db}.password",
        "volume": f"{container}-data" if own else None,
        "env_file": f"{CONFIG_ROOT}/postgres/{container}.env" if own else None,
        "url_env": "DATABASE_URL",
    }


def redis_names(name, redis=True, container=None):
    """App NAME's Redis: its own (REDIS true) or the one of the app REDIS
    names. The server (container, data volume, configuration directory: the
    owner's) and NAME's own ACL user on it, whose password is in its own
    root-only file."""
    owner = name if redis is True else redis
    container = container or f"{owner}-redis"
    return {
        "owner": owner,
        "container": container,
        "volume": f"{container}-data",
        "host": "redis",
        "config_dir": f"{CONFIG_ROOT}/{owner}/redis",
        "user": name,
        "password_file": f"{CONFIG_ROOT}/{name}/redis.password",
        "url_env": "REDIS_URL",
    }


def credential_files(app):
    """The files on the server holding the passwords of APP's own database
    role and Redis user (the postgres role writes them)."""
    derived = app.get("derived") or {}
    return [d["password_file"] for d in (derived.get("database"), derived.get("redis")) if d]


def environment(app, credentials=None):
    """The variables of APP's env file: its env and secret_env, with the URLs
    of its own database role and Redis user, built from their passwords
    (CREDENTIALS: {password file: its text}, as read from the server; a store
    whose file is not there gets no URL). Returns (variables, warnings): a
    DATABASE_URL or REDIS_URL the inventory set for an app whose data store
    onebox runs is replaced, and said so (an old URL would name the
    superuser)."""
    credentials = credentials or {}
    env = {str(k): "" if v is None else str(v) for k, v in {**app.get("env", {}), **app.get("secret_env", {})}.items()}
    warnings = []
    derived = app.get("derived") or {}
    stores = []
    for names, url, what in (
        (derived.get("database"), postgres_url, "its database role"),
        (derived.get("redis"), redis_url, "its Redis"),
    ):
        if names and credentials.get(names["password_file"]):
            stores.append((names["url_env"], url(names, credentials[names["password_file"]].strip()), what))
    for key, url, what in stores:
        if key in env and env[key] != url:
            warnings.append(
                f"app '{app['name']}': {key} in env/secret_env is replaced by the URL of {what} (onebox runs it); "
                f"remove it from the inventory"
            )
        env[key] = url
    return env, warnings


def env_applied(env, container_env):
    """Whether a container started with CONTAINER_ENV (docker inspect's
    Config.Env, KEY=VALUE strings) has every variable of ENV as it is now."""
    have = set(container_env or [])
    return all(f"{k}={v}" in have for k, v in (env or {}).items())


def postgres_url(names, password):
    """postgres://ROLE:PASSWORD@postgres:5432/DB for an app's login role."""
    return f"postgres://{names['role']}:{quote(password, safe='')}@{names['host']}:5432/{names['name']}"


def redis_url(names, password):
    """redis://USER:PASSWORD@redis:6379/0 for an app's own Redis."""
    return f"redis://{names['user']}:{quote(password, safe='')}@{names['host']}:6379/0"


# Each Redis user's ACL rules, after its password: every key and channel of
# its server (the apps sharing it said so), every command but @admin (no
# CONFIG, ACL, MODULE, DEBUG, SHUTDOWN or REPLICAOF); the owner's user also
# stands for the server's off-site copy (BGSAVE, LASTSAVE, CONFIG GET).
REDIS_RULES = "~* &* +@all -@admin"
REDIS_OWNER_RULES = REDIS_RULES + " +bgsave +lastsave +config|get"


def data_stores(apps, secrets=True):
    """What the postgres role runs for the model APPS: the networks the shared
    PostgreSQL joins (those of the apps whose database is in it), each
    PostgreSQL container of an app's own, each app database with its role
    (one per database: the apps sharing it share the role) and each app's
    Redis, and the monitoring role of the shared PostgreSQL. Holds the passwords the model gives (database_password,
    redis_password; "" when one is to be generated): keep it out of output,
    or leave them out (SECRETS=False)."""
    shared, own, databases, redis = [], {}, {}, {}
    for app in apps:
        derived = app.get("derived") or {}
        db = derived.get("database")
        if db:
            if db["own"]:
                entry = own.setdefault(
                    db["container"],
                    {"container": db["container"], "volume": db["volume"], "env_file": db["env_file"], "networks": []},
                )
                entry["networks"].append(derived["network"])
            else:
                shared.append(derived["network"])
            # Its backup job (timer, directory, metrics) is named after the
            # first app of the model that uses it.
            entry = databases.setdefault(db["name"], dict(db, apps=[], password="", job=app["name"]))
            entry["apps"].append(app["name"])
            entry["password"] = entry["password"] or app.get("database_password") or ""
        if derived.get("redis"):
            r = derived["redis"]
            # The owner's user also stands for the server (BGSAVE for the off-site copy).
            server = redis.setdefault(
                r["container"],
                dict({k: r[k] for k in ("owner", "container", "volume", "config_dir")}, networks=[], users=[]),
            )
            if r["user"] == r["owner"]:
                server.update(app=r["owner"], user=r["user"], password_file=r["password_file"])
            server["networks"].append(derived["network"])
            server["users"].append(
                {
                    "user": r["user"],
                    "password_file": r["password_file"],
                    "password": app.get("redis_password") or "",
                    "rules": REDIS_OWNER_RULES if r["user"] == r["owner"] else REDIS_RULES,
                }
            )
    out = {
        "shared_networks": sorted(set(shared)),
        "own": [dict(v, networks=sorted(set(v["networks"]))) for _k, v in sorted(own.items())],
        "databases": [databases[k] for k in sorted(databases)],
        "redis": [dict(v, networks=sorted(set(v["networks"]))) for _k, v in sorted(redis.items())],
        "monitor": {"role": MONITOR_ROLE, "password_file": f"{CONFIG_ROOT}/postgres/{MONITOR_ROLE}.password"},
    }
    if not secrets:
        for entry in out["databases"] + [u for r in out["redis"] for u in r["users"]]:
            entry.pop("password")
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
    _data_stores(app, where, errors)
    for key in ("command", "healthcheck"):
        if not isinstance(app[key], (str, list)):
            errors.append(f"{where}: {key} must be a command, as a string or a list of words")
    for key in ("env", "secret_env"):
        if not isinstance(app[key], dict):
            errors.append(f"{where}: {key} must be a mapping of NAME: value")
            app[key] = {}
        bad = [str(k) for k in app[key] if not isinstance(k, str) or not ENV_NAME.match(k)]
        if bad:
            errors.append(f"{where}: {key} names {', '.join(map(repr, bad))}: a variable name is letters, digits and _")
    _no_control_characters(raw, where, errors)
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
    for key in floats + (
        "verify_seconds",
        "drain_timeout",
        "fallback_seconds",
        "stop_timeout",
        "keep_releases",
        "verify_min_requests",
    ):
        try:
            app[key] = float(app[key]) if key in floats else int(app[key])
        except (TypeError, ValueError):
            errors.append(f"{where}: {key} must be a number, not {app[key]!r}")
    if isinstance(app["fallback_seconds"], int) and app["fallback_seconds"] < 0:
        errors.append(f"{where}: fallback_seconds must be 0 (no backup server) or more, not {app['fallback_seconds']}")
    _verification(app, where, errors)
    return app


def _no_control_characters(raw, where, errors):
    """Refuse a control character (a newline above all) in any string of the
    entry: each one reaches the env file, a command line, haproxy.cfg or the
    audit log, where it would start a line of its own. A secret's place is
    named, never its value."""
    for key, value in raw.items():
        if key == "derived":
            continue
        pattern = CONTROL_IN_TEXT if key in TEXT_KEYS else CONTROL
        for path, char, at in _control_characters(value, key, pattern):
            if key in SECRET_KEYS:
                errors.append(f"{where}: {path} holds a control character (a newline?): remove it")
                continue
            shown = "a newline" if char == "\n" else f"control character {char!r}"
            errors.append(
                f"{where}: {path} holds {shown} (at character {at}); it would reach a file or a command line "
                "as a line of its own: remove it"
            )


def _control_characters(value, path, pattern):
    """(path, character, 1-based position) of each string in VALUE (strings,
    mappings and lists, keys included) that PATTERN finds a character in."""
    if isinstance(value, str):
        m = pattern.search(value)
        return [(path, m.group(), m.start() + 1)] if m else []
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _control_characters(k, f"{path} key", pattern)
            found += _control_characters(v, f"{path}.{k}", pattern)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += _control_characters(v, f"{path}[{i}]", pattern)
    return found


def _data_stores(app, where, errors):
    """The app's database (in the shared PostgreSQL or its own) and Redis."""
    db = app["database"]
    if db and (not isinstance(db, str) or not DATABASE.match(db)):
        errors.append(f"{where}: database {db!r} must be letters, digits and _ (a PostgreSQL name)")
    elif db in RESERVED_DATABASES:
        errors.append(
            f"{where}: database {db!r} is PostgreSQL's own or onebox's; name the app's database after the app"
        )
    container = app["database_container"]
    if container and (not isinstance(container, str) or not NAME.match(container)):
        errors.append(f"{where}: database_container {container!r} must be a container name (letters, digits, _ and -)")
    elif container and not db:
        errors.append(f"{where}: database_container {container!r} needs database: NAME (the database it holds)")
    for key in ("database_password", "redis_password"):
        if not isinstance(app[key], str):
            errors.append(f"{where}: {key} must be a string (keep it in Vault)")
        elif app[key] and len(app[key]) < 12:
            errors.append(f"{where}: {key} must be 12 characters or more (or empty: one is generated on the server)")
    if not isinstance(app["redis"], (bool, str)) or (isinstance(app["redis"], str) and not NAME.match(app["redis"])):
        errors.append(
            f"{where}: redis must be true, false or the name of the app whose Redis it uses, not {app['redis']!r}"
        )


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


def settings_of(variables):
    """What the model needs from the rest of the inventory: the shared
    PostgreSQL container's name (the postgres role's postgres_container) and,
    for the old single-app variables, their Redis container."""
    variables = variables or {}
    legacy_name = variables.get("app_name") or "app"
    out = {"shared_postgres": variables.get("postgres_container") or f"{legacy_name}-postgres", "redis_container": None}
    if variables.get("postgres_redis_container"):
        out["redis_container"] = variables["postgres_redis_container"]
    return out


def normalize(apps, reserved_ports=(), need_image=True, settings=None):
    """Check and complete a list of apps; every entry gets the defaults and
    ``derived``. Raises ModelError listing every mistake. RESERVED_PORTS
    (host ports something else on the server uses) must not be taken.
    NEED_IMAGE=False: for routing only (the haproxy role alone). SETTINGS:
    settings_of() the inventory (the shared PostgreSQL's name...)."""
    settings = settings or settings_of({})
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
    _shared_stores(out, settings, errors)
    _shared_redis(out, errors)
    if errors:
        raise ModelError("\n".join(errors))
    legacy_redis = settings.get("redis_container") if len(out) == 1 else None
    for app in out:
        app["derived"] = derive(app, settings["shared_postgres"], legacy_redis)
    return out


def _shared_redis(apps, errors):
    """redis: NAME must name another app of the model with a Redis of its own."""
    own = {a["name"] for a in apps if a.get("redis") is True}
    for app in apps:
        ref = app.get("redis")
        if isinstance(ref, str) and (ref == app["name"] or ref not in own):
            errors.append(
                f"app '{app['name']}': redis: {ref} must name another app with redis: true (whose Redis it shares); "
                f"apps with one: {', '.join(sorted(own)) or 'none'}"
            )


def _shared_stores(apps, settings, errors):
    """Databases several apps use (a web app and its worker) live in one
    container and share one role; container names of the data stores must
    not be an app's own."""
    taken = {c: a["name"] for a in apps for c in (f"{a['name']}-{x}" for x in (*COLOURS, "migrate", "redis"))}
    where_db = {}
    for app in apps:
        db = app.get("database")
        if not db:
            continue
        container = app.get("database_container") or settings["shared_postgres"]
        if db in where_db and where_db[db][1] != container:
            errors.append(
                f"database {db} is in {where_db[db][1]} for '{where_db[db][0]}' but in {container} for "
                f"'{app['name']}': apps sharing a database share its container"
            )
        where_db.setdefault(db, (app["name"], container))
        if container != settings["shared_postgres"] and container in taken:
            errors.append(
                f"app '{app['name']}': database_container {container} is the name of a container of "
                f"'{taken[container]}'; pick another name"
            )


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
    "app_fallback_seconds": "fallback_seconds",
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
    if variables.get("postgres_redis_enabled") in (True, "true", "True", "yes", 1):
        raise ModelError(
            "postgres_redis_enabled asks for one Redis shared by every app, which lets any app read or flush "
            "another's keys. Each app now has a Redis of its own: set redis: true on the apps of onebox_apps "
            "that use one (each gets REDIS_URL) and remove postgres_redis_enabled. A shared Redis container "
            "already running is left as it is, with its data. Nothing was changed."
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
        app["database_container"] = variables["app_database_container"]
    # The old settings' one Redis (postgres_redis_enabled) is this app's own.
    app["redis"] = bool(variables.get("postgres_redis_enabled"))
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
