# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The off-site copy of a whole server, and getting it back.

restic (encrypted, deduplicated, verifiable) copies what a server holds
besides the database's WAL: the dumps, the apps' named volumes (read in
place, the apps keep running), a consistent Redis snapshot (BGSAVE, then
wait for it), /etc/onebox and the release histories. The pgBackRest
repository (WAL and base backups, encrypted by pgBackRest) is mirrored
with rsync over SSH every few seconds, so little is lost with the server.

Copies the server cannot destroy. The server's own credentials only add:
- restic goes through an append-only endpoint (rest-server or
  ``rclone serve restic --append-only``): new snapshots, never a deletion;
  the server never runs ``forget`` or ``prune``;
- the WAL mirror is written with ``--ignore-existing`` and never
  ``--delete``, and the storage host enforces it (``rrsync -no-del
  -no-overwrite`` as the key's forced command). pgBackRest rewrites its
  info files (backup.info, archive.info): each version of them goes up
  under a new name (info/STAMP-DIGEST/), with a plain index of the base
  backups it lists (labels and the WAL they start from), and a recovery
  takes the newest complete version. A base backup goes up only once
  pgBackRest lists it as done, so nothing half-written is ever kept.
Retention is a separate run with other credentials (``onebox-dr prune``
from playbooks/offsite-prune.yml, on the controller or a host of its own):
``restic forget --prune`` by offsite_keep_*, and the WAL mirror pruned with
the base backups it belongs to (nothing the oldest kept one needs). A run
that applied both leaves a marker snapshot (tag onebox-prune, the newest
only); each backup reads it, and the alerts say when retention has not run
for too long (or ever, since the oldest snapshot).

Both refuse to write over another server's copy: each server has an id
(/etc/onebox/server-id); snapshots carry it as a tag and the WAL mirror
holds it in a file. A new server gets the old id only by recovering it.

One owner: this module writes and reads the settings file
(/etc/onebox/offsite.json is written by the offsite role from the same
keys, see SETTINGS), the manifest inside each snapshot, the WAL mirror's
layout and index, and the metrics. Standard library only: the on-server
``onebox-dr`` program uses it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

SETTINGS = (
    "repository",  # rest:https://host:port/path/, sftp:user@host:/path, s3:https://host/bucket/path, or a local path
    "password_file",
    "rest_user",  # rest: the HTTP basic auth user of the append-only endpoint
    "rest_password_file",  # ... and a file holding its password
    "cacert",  # rest: the endpoint's TLS certificate (or its CA), when not from a public CA
    "ssh_key",
    "known_hosts",
    "ssh_port",
    "s3_env_file",  # AWS_ACCESS_KEY_ID=... / AWS_SECRET_ACCESS_KEY=...
    "cache_dir",
    "paths",  # plain directories: dumps, /etc/onebox, /var/lib/onebox...
    "volumes",  # Docker volume names
    "redis",  # Redis containers: {container, user, password_file} (or a container name)
    "keep_last",  # the prune run's retention of the snapshots
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "wal_repo",  # the pgBackRest repository directory ("" = no WAL mirror)
    "wal_target",  # user@host:path of its mirror (a local directory for the prune run on the storage host)
    "wal_keep_full",  # the prune run: full base backups kept in the mirror
    "server_id_file",
    "stage_dir",
    "metrics_dir",
    "max_ages",  # backup, check, wal, drill, retention -> seconds, for the alerts
    "apps",  # each app: name, kind, database_container, volumes, redis_container (restores lock them)
    "haproxy_socket",
    "haproxy_state_file",
)
MANIFEST = "onebox-manifest.json"
# The prune run's marker: a tiny snapshot with this tag (never "onebox", so
# no restore or retention of the server's snapshots sees it).
RETENTION_TAG = "onebox-prune"
# The WAL mirror: TARGET/server-id, TARGET/pgbackrest/ (the repository
# without its info files), TARGET/info/STAMP-DIGEST/ (each version of them).
MIRROR_REPO = "pgbackrest"
MIRROR_INFO = "info"
INDEX = "backups.json"
INFO_NAMES = ("backup.info", "backup.info.copy", "archive.info", "archive.info.copy")
LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
VERSION = re.compile(r"^\d{8}T\d{6}Z-([0-9a-f]{12})$")
SEGMENT = re.compile(r"^([0-9A-F]{24})[-.]")
# A snapshot dated this far ahead of the prune run's clock is refused.
FUTURE_SLACK = 3600


class OffsiteError(Exception):
    """A failed step; the message says what to do. Nothing was overwritten."""


def redact(text, secrets):
    """TEXT with each of SECRETS (passwords) replaced by ********."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********").replace(urllib.parse.quote(secret, safe=""), "********")
    return text


def explain_restic(stderr, repository):
    """A sentence a tired person can act on, from restic's error text."""
    text = (stderr or "").strip()
    low = text.lower()
    if "wrong password" in low:
        return f"restic: wrong password for the repository {repository} (offsite_password in Vault)."
    if "is there a repository at the following location" in low or "unable to open config file" in low:
        if "401" in low or "unauthorized" in low:
            return f"restic: the endpoint {repository} refused the login (offsite_rest_user, offsite_rest_password)."
        if "x509" in low or "certificate" in low:
            return f"restic: the TLS certificate of {repository} is not trusted (offsite_rest_cacert): {text[-300:]}"
        if not any(s in low for s in ("connection refused", "no route to host", "dial tcp", "no such host")):
            return f"restic: there is no repository at {repository} yet (or the path is wrong)."
    if "already locked" in low:
        return f"restic: the repository {repository} is locked by another run (a prune or a backup): {text[-300:]}"
    if any(
        s in low
        for s in (
            "connection refused",
            "no route to host",
            "could not resolve",
            "connection timed out",
            "ssh command exited",
            "unable to start the sftp session",
            "host key verification failed",
            "permission denied",
            "dial tcp",
            "no such host",
        )
    ):
        return f"restic: cannot reach the off-site repository {repository}: {text.splitlines()[-1] if text else ''}"
    if "pack" in low and ("does not match" in low or "invalid" in low or "ciphertext verification failed" in low):
        return f"restic: the off-site copy {repository} is damaged (failed verification): {text[-400:]}"
    if "forbidden" in low or "403" in low:
        return f"restic: the endpoint {repository} refused a change (append-only): {text[-300:]}"
    return f"restic failed on {repository}: {text[-600:]}"


def retention_args(cfg):
    out = []
    for key in ("last", "hourly", "daily", "weekly", "monthly"):
        value = int(cfg.get(f"keep_{key}") or 0)
        if value > 0:
            out += [f"--keep-{key}", str(value)]
    if not out:
        raise OffsiteError(
            "restic retention keeps nothing: set at least one offsite_keep_* above 0. Nothing was deleted."
        )
    return out


def server_id(cfg):
    try:
        with open(cfg["server_id_file"], encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError:
        value = ""
    if not re.match(r"^[a-zA-Z0-9-]{8,64}$", value):
        raise OffsiteError(f"{cfg['server_id_file']} holds no server id; run site.yml (offsite role) first")
    return value


def other_servers(snapshots, sid):
    """Ids of the servers whose snapshots the repository holds, other than SID."""
    ids = set()
    for snap in snapshots or []:
        for tag in snap.get("tags") or []:
            if tag.startswith("server-id:"):
                ids.add(tag.split(":", 1)[1])
    return sorted(ids - {sid})


def snapshot_time(snap):
    """A restic snapshot's time (RFC 3339 with nanoseconds) as a Unix time."""
    text = str(snap.get("time") or "")
    found = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not found:
        raise OffsiteError(f"snapshot {snap.get('short_id', '?')} has a time restic did not write: {text!r}")
    offset = found.group(3)
    stamp = time.mktime(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        stamp -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return stamp


def future_snapshots(snapshots, now, slack=FUTURE_SLACK):
    """Snapshots dated more than SLACK seconds after NOW: a wrong clock on
    the server (or snapshots added to push the real ones out of retention)."""
    return [s for s in snapshots or [] if snapshot_time(s) > now + slack]


def retention_applied(snapshots, sid):
    """When retention last ran on the repository: the newest prune marker's
    time, or, when there is none, the oldest snapshot of server SID (it has
    grown since then). None for an empty repository."""
    marks = [snapshot_time(s) for s in snapshots or [] if RETENTION_TAG in (s.get("tags") or [])]
    if marks:
        return max(marks)
    own = [snapshot_time(s) for s in snapshots or [] if f"server-id:{sid}" in (s.get("tags") or [])]
    return min(own) if own else None


def metrics_text(state, max_ages=None):
    """Prometheus text from the state file: per kind (backup, check, wal),
    the last attempt's success, the last success's time and the age the
    alerts allow (MAX_AGES: kind -> seconds)."""
    lines = []
    max_ages = max_ages or {}
    for kind, help_text in (
        ("backup", "restic snapshot of the server's files"),
        ("check", "restic check of the off-site repository"),
        ("wal", "mirror of the pgBackRest repository"),
        ("drill", "point-in-time restore drill of the pgBackRest repository"),
    ):
        entry = state.get(kind)
        if not entry:
            continue
        lines += [
            f"# HELP onebox_offsite_{kind}_success 1 when the last {help_text} succeeded.",
            f"# TYPE onebox_offsite_{kind}_success gauge",
            f"onebox_offsite_{kind}_success {1 if entry.get('ok') else 0}",
            f"# HELP onebox_offsite_{kind}_last_success_timestamp_seconds Time of the last good {help_text}.",
            f"# TYPE onebox_offsite_{kind}_last_success_timestamp_seconds gauge",
            f"onebox_offsite_{kind}_last_success_timestamp_seconds {float(entry.get('last_success') or 0):.0f}",
        ]
        if max_ages.get(kind):
            lines += [
                f"# HELP onebox_offsite_{kind}_max_age_seconds Age of the last good {help_text} the alerts allow.",
                f"# TYPE onebox_offsite_{kind}_max_age_seconds gauge",
                f"onebox_offsite_{kind}_max_age_seconds {int(max_ages[kind])}",
            ]
        if kind == "backup" and entry.get("retention_applied"):
            lines += [
                "# HELP onebox_offsite_retention_applied_timestamp_seconds When the prune run last applied "
                "retention to the off-site copies (the oldest snapshot's time when it never did).",
                "# TYPE onebox_offsite_retention_applied_timestamp_seconds gauge",
                f"onebox_offsite_retention_applied_timestamp_seconds {float(entry['retention_applied']):.0f}",
            ]
            if max_ages.get("retention"):
                lines += [
                    "# HELP onebox_offsite_retention_max_age_seconds Time without retention the alerts allow.",
                    "# TYPE onebox_offsite_retention_max_age_seconds gauge",
                    f"onebox_offsite_retention_max_age_seconds {int(max_ages['retention'])}",
                ]
        if kind == "backup" and entry.get("bytes_added") is not None:
            lines += [
                "# TYPE onebox_offsite_backup_bytes_added gauge",
                f"onebox_offsite_backup_bytes_added {int(entry['bytes_added'])}",
                "# TYPE onebox_offsite_backup_duration_seconds gauge",
                f"onebox_offsite_backup_duration_seconds {float(entry.get('seconds') or 0):.1f}",
            ]
    appended = state.get("append_only") or {}
    if appended:
        lines += [
            "# HELP onebox_offsite_append_only 1 when the off-site copy refused a deletion from this server's "
            "credentials (checked by onebox-dr probe), 0 when it allowed one, -1 when it could not be told.",
            "# TYPE onebox_offsite_append_only gauge",
        ]
        for copy in sorted(appended):
            value = appended[copy]
            lines.append(f'onebox_offsite_append_only{{copy="{copy}"}} {-1 if value is None else int(bool(value))}')
    return "\n".join(lines) + "\n"


# A server's apps: what a restore touches, whether it serves -------------------


def touched_apps(apps, command, manifest=None, pitr_container=""):
    """The apps (from the settings' APPS: name, kind, database_container,
    volumes, redis_container) whose live data COMMAND overwrites: their
    deploy locks are taken and they show maintenance meanwhile.
    restore-db: every app whose database is in the point-in-time cluster;
    restore-volumes and restore-redis: the apps whose volumes or Redis the
    fetched copy (MANIFEST) holds."""
    manifest = manifest or {}
    if command == "restore-db":
        return [a for a in apps if pitr_container and a.get("database_container") == pitr_container]
    if command == "restore-volumes":
        volumes = set(manifest.get("volumes") or {})
        return [a for a in apps if volumes & set(a.get("volumes") or [])]
    if command == "restore-redis":
        containers = {r.get("container") for r in manifest.get("redis") or []}
        return [a for a in apps if a.get("redis_container") and a["redis_container"] in containers]
    return []


def serving_reasons(views):
    """Why a server serves traffic, one line per app, from what it shows.
    VIEWS: per app {app, kind, last (its last release record or None),
    running ({colour: its container runs}), servers (HAProxy's view of its
    backend: {name: {admin_state, op_state, sessions, total}}, or None)}:
    a last release whose container runs, or a live server HAProxy sends
    requests to. [] for a server with nothing live (a new one)."""
    out = []
    for view in views:
        last = view.get("last") or {}
        colour = last.get("colour") or ""
        if last.get("version") and view.get("running", {}).get(colour):
            out.append(f"{view['app']}: its last release {last['version']} runs ({view['app']}-{colour})")
            continue
        for name, server in sorted((view.get("servers") or {}).items()):
            busy = int(server.get("sessions") or 0) + int(server.get("total") or 0)
            if server.get("admin_state") == "ready" and server.get("op_state") == "up" and busy:
                out.append(f"{view['app']}: HAProxy sends its traffic to {name} ({busy} requests so far)")
                break
    return out


# The WAL mirror's decisions --------------------------------------------------


def info_digest(files):
    """The digest naming a version of the info files (FILES: relative path -> bytes)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    return h.hexdigest()


def index_of(stanza, backups, sid, now):
    """The plain index a version of the info files carries: the complete base
    backups pgBackRest listed (label, type, prior, the WAL each starts and
    stops at). File names only: nothing the encryption hides."""
    return {
        "server_id": sid,
        "written": int(now),
        "stanza": stanza,
        "backups": [
            {
                "label": b.get("label"),
                "type": b.get("type"),
                "prior": b.get("prior"),
                "archive_start": b.get("archive_start") or "",
                "archive_stop": b.get("archive_stop") or "",
                "stop": b.get("stop"),
            }
            for b in backups
        ],
    }


def version_valid(name, files):
    """A version of the info files as uploaded: its name's digest matches
    what arrived (an upload cut short does not) and both info files are there."""
    found = VERSION.match(name)
    if not found:
        return False
    infos = {rel: data for rel, data in files.items() if rel != INDEX}
    has = {rel.rsplit("/", 1)[-1] for rel in infos}
    return {"backup.info", "archive.info"} <= has and info_digest(infos)[:12] == found.group(1)


def _full_of(label):
    return label.split("_", 1)[0]


def plan_wal_prune(files, versions, keep_full):
    """What the prune run deletes from the WAL mirror, decided from its file
    list alone. FILES: the relative paths of every file in the mirror;
    VERSIONS: [(name, valid, index or None)] of the info versions;
    KEEP_FULL: full base backups to keep per stanza (1 or more).

    Kept: the newest KEEP_FULL complete full backups with the differential
    and incremental ones that depend on them, and every backup the newest
    valid info version lists (what a recovery restores from). Deleted: the
    older backups, the WAL older than what the oldest kept backup starts
    from, their backup.history manifests, and the info versions that list
    no kept backup (never the newest valid one). Without the start of
    every kept backup in an index, no WAL is deleted."""
    if int(keep_full) < 1:
        raise OffsiteError("the WAL mirror's retention keeps no full backup: set offsite_wal_keep_full to 1 or more")
    repo = MIRROR_REPO + "/"
    complete, present = {}, {}
    for path in files:
        if not path.startswith(repo + "backup/"):
            continue
        parts = path[len(repo) :].split("/")
        if len(parts) >= 4 and LABEL.match(parts[2]):
            present.setdefault(parts[1], set()).add(parts[2])
            if parts[3] == "backup.manifest" and len(parts) == 4:
                complete.setdefault(parts[1], set()).add(parts[2])
    valid = sorted((n for n, ok, _i in versions if ok), reverse=True)
    newest = valid[0] if valid else ""
    indexes = {n: i for n, ok, i in versions if ok and i}
    starts = {}
    for index in indexes.values():
        for b in index.get("backups") or []:
            if b.get("label") and b.get("archive_start"):
                starts.setdefault((index.get("stanza"), b["label"]), b["archive_start"])
    listed = {}
    if newest in indexes:
        listed[indexes[newest].get("stanza")] = {b["label"] for b in indexes[newest].get("backups") or []}
    out = {"backups": [], "files": [], "versions": [], "kept": {}, "wal_from": {}, "notes": []}
    kept_all = set()
    for stanza in sorted(present):
        done = complete.get(stanza, set())
        fulls = sorted((label for label in done if label.endswith("F")), reverse=True)[: int(keep_full)]
        keep = {label for label in done if _full_of(label) in fulls}
        keep |= {label for label in listed.get(stanza, set()) if label in present[stanza]}
        keep |= {_full_of(label) for label in keep if _full_of(label) in present[stanza]}
        if not keep:
            out["notes"].append(f"{stanza}: no complete base backup in the mirror; nothing of it is deleted")
            continue
        oldest_full = min(_full_of(label) for label in keep)
        drop = sorted(label for label in present[stanza] if label not in keep and _full_of(label) < oldest_full)
        out["kept"][stanza] = sorted(keep)
        kept_all |= {(stanza, label) for label in keep}
        out["backups"] += [f"{repo}backup/{stanza}/{label}" for label in drop]
        for path in files:
            if path.startswith(f"{repo}backup/{stanza}/backup.history/"):
                name = path.rsplit("/", 1)[-1].split(".", 1)[0]
                if name in drop:
                    out["files"].append(path)
        missing = sorted(label for label in keep if (stanza, label) not in starts)
        if missing:
            out["notes"].append(
                f"{stanza}: no index gives the WAL start of {', '.join(missing)}; no WAL of it is deleted"
            )
            continue
        start = min(starts[(stanza, label)] for label in keep)
        out["wal_from"][stanza] = start
        for path in files:
            if not path.startswith(f"{repo}archive/{stanza}/"):
                continue
            found = SEGMENT.match(path.rsplit("/", 1)[-1])
            if found and found.group(1) < start:
                out["files"].append(path)
    for name, ok, index in versions:
        if name == newest:
            continue
        if not ok:
            if name < newest:
                out["versions"].append(name)
            continue
        labels = {(index.get("stanza"), b.get("label")) for b in (index or {}).get("backups") or []}
        if not labels & kept_all:
            out["versions"].append(name)
    out["files"].sort()
    out["versions"].sort()
    return out


# Where the WAL mirror is ----------------------------------------------------


class Mirror:
    """The WAL mirror, through rsync over SSH (USER@HOST:PATH) or, for the
    prune run on the storage host itself, a local directory."""

    def __init__(self, target, rsync):
        self.target = (target or "").rstrip("/")
        # USER@HOST:PATH (PATH may be empty: the forced command's directory).
        self.remote = ":" in self.target and not self.target.startswith("/")
        self._rsync = rsync

    def path(self, rel=""):
        return f"{self.target}/{rel}" if rel else f"{self.target}/"

    def listing(self, rel=""):
        """{relative path: 'f' or 'd'} of everything under REL ({} when it is not there)."""
        if not self.remote:
            root = os.path.join(self.target, rel)
            out = {}
            for top, dirs, names in os.walk(root):
                for d in dirs:
                    out[os.path.relpath(os.path.join(top, d), root)] = "d"
                for n in names:
                    out[os.path.relpath(os.path.join(top, n), root)] = "f"
            return out
        proc = self._rsync("-r", "--list-only", self.path(rel))
        if proc.returncode != 0:
            if "no such file" in (proc.stderr or "").lower():
                return {}
            raise OffsiteError(f"cannot list the WAL mirror {self.path(rel)}: {proc.stderr.strip()[-300:]}")
        out = {}
        for line in proc.stdout.splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[4] != ".":
                out[fields[4]] = "d" if fields[0].startswith("d") else "f"
        return out

    def read(self, rel):
        """The bytes of file REL, or None when it is not there."""
        if not self.remote:
            try:
                with open(os.path.join(self.target, rel), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return None
        with tempfile.TemporaryDirectory() as tmp:
            proc = self._rsync(self.path(rel), f"{tmp}/file")
            if proc.returncode != 0:
                if "no such file" in (proc.stderr or "").lower():
                    return None
                raise OffsiteError(f"cannot reach the WAL mirror {self.target}: {proc.stderr.strip()[-300:]}")
            with open(f"{tmp}/file", "rb") as fh:
                return fh.read()

    def download(self, rel, dest):
        os.makedirs(dest, exist_ok=True)
        if not self.remote:
            copy_tree(os.path.join(self.target, rel), dest)
            return
        proc = self._rsync("-rt", self.path(rel).rstrip("/") + "/", f"{dest.rstrip('/')}/")
        if proc.returncode != 0:
            raise OffsiteError(f"cannot copy {self.path(rel)} down: {proc.stderr.strip()[-300:]}")

    def delete(self, files=(), trees=()):
        """Delete FILES and whole directories TREES (relative paths): the
        prune run, with credentials that may delete."""
        if not self.remote:
            for rel in trees:
                shutil.rmtree(os.path.join(self.target, rel), ignore_errors=True)
            for rel in files:
                try:
                    os.remove(os.path.join(self.target, rel))
                except FileNotFoundError:
                    pass
            return
        groups = {}
        for rel in files:
            parent, _sep, name = rel.rpartition("/")
            groups.setdefault(parent, []).append(f"/{name}")
        for rel in trees:
            parent, _sep, name = rel.rpartition("/")
            groups.setdefault(parent, []).append(f"/{name}/***")
        with tempfile.TemporaryDirectory() as tmp:
            rules, empty = os.path.join(tmp, "rules"), os.path.join(tmp, "empty")
            os.makedirs(empty)
            for parent, patterns in sorted(groups.items()):
                # Only what is named goes: everything else is excluded, so
                # protected from --delete.
                with open(rules, "w", encoding="utf-8") as fh:
                    fh.write("".join(f"+ {p}\n" for p in patterns) + "- *\n")
                proc = self._rsync("-r", "--delete", f"--filter=merge {rules}", f"{empty}/", self.path(parent) + "/")
                if proc.returncode != 0:
                    raise OffsiteError(
                        f"deleting in the WAL mirror {self.path(parent)} failed: {proc.stderr.strip()[-300:]}"
                    )


class Offsite:
    def __init__(self, cfg, run=subprocess.run):
        missing = [k for k in ("repository", "password_file") if not cfg.get(k)]
        if missing:
            raise OffsiteError(f"the off-site settings lack {', '.join(missing)}")
        self.cfg = cfg
        self._run = run

    # restic ---------------------------------------------------------------
    def _rest_password(self):
        if not self.cfg.get("rest_password_file"):
            return ""
        with open(self.cfg["rest_password_file"], encoding="utf-8") as fh:
            return fh.read().strip()

    def repository_url(self):
        """The repository as restic opens it: for rest:, with the basic auth
        user and password (only ever in restic's environment)."""
        repo = self.cfg["repository"]
        if repo.startswith("rest:") and self.cfg.get("rest_user"):
            scheme, sep, rest = repo[len("rest:") :].partition("://")
            if sep:
                user = urllib.parse.quote(self.cfg["rest_user"], safe="")
                return f"rest:{scheme}://{user}:{urllib.parse.quote(self._rest_password(), safe='')}@{rest}"
        return repo

    def secrets(self):
        return [self._rest_password()]

    def env(self):
        env = dict(os.environ)
        env["RESTIC_REPOSITORY"] = self.repository_url()
        env["RESTIC_PASSWORD_FILE"] = self.cfg["password_file"]
        env["RESTIC_CACHE_DIR"] = self.cfg.get("cache_dir") or "/var/cache/onebox-restic"
        if self.cfg.get("s3_env_file"):
            with open(self.cfg["s3_env_file"], encoding="utf-8") as fh:
                for line in fh:
                    key, sep, value = line.strip().partition("=")
                    if sep and key:
                        env[key] = value
        return env

    def ssh_argv(self):
        argv = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=15",
        ]
        if self.cfg.get("ssh_key"):
            argv += ["-i", self.cfg["ssh_key"], "-o", "IdentitiesOnly=yes"]
        if self.cfg.get("known_hosts"):
            argv += ["-o", f"UserKnownHostsFile={self.cfg['known_hosts']}"]
        if self.cfg.get("ssh_port"):
            argv += ["-p", str(self.cfg["ssh_port"])]
        return argv

    def restic_argv(self, *args):
        argv = ["restic", "--no-lock"] if args and args[0] in ("snapshots", "cat") else ["restic"]
        repo = self.cfg["repository"]
        if repo.startswith("sftp:"):
            userhost = repo[len("sftp:") :].split(":", 1)[0]
            argv += [
                "-o",
                "sftp.command=" + " ".join(shlex.quote(a) for a in self.ssh_argv() + [userhost, "-s", "sftp"]),
            ]
        if self.cfg.get("cacert"):
            argv += ["--cacert", self.cfg["cacert"]]
        return argv + list(args)

    def restic(self, *args, timeout=6 * 3600):
        proc = self._run(
            self.restic_argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise OffsiteError(redact(explain_restic(proc.stderr, self.cfg["repository"]), self.secrets()))
        return proc.stdout

    def snapshots(self):
        return json.loads(self.restic("snapshots", "--json") or "[]")

    def ensure_repository(self):
        """Open the repository; create it only when restic says there is none
        (never when it cannot reach it or the password is wrong)."""
        try:
            return self.snapshots()
        except OffsiteError as exc:
            if "there is no repository" not in str(exc):
                raise
        self.restic("init")
        return []

    # backup ---------------------------------------------------------------
    def stage_redis(self, entry, stage, timeout=120):
        """A consistent copy of a Redis container's data: BGSAVE, wait until
        LASTSAVE moves and the save is reported ok, then copy the RDB.
        ENTRY: {container, user, password_file} (the app's own Redis: its
        ACL user, the password passed in the environment, never on a
        command line) or a container name (no authentication)."""
        if isinstance(entry, str):
            entry = {"container": entry}
        container = entry["container"]
        env = dict(os.environ)
        auth = []
        if entry.get("password_file"):
            with open(entry["password_file"], encoding="utf-8") as fh:
                env["REDISCLI_AUTH"] = fh.read().strip()
            auth = ["-e", "REDISCLI_AUTH"]
        user = ["--user", entry["user"]] if entry.get("user") else []

        def cli(*args):
            proc = self._run(
                ["docker", "exec", *auth, container, "redis-cli", *user, "--no-auth-warning", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )
            answer = (proc.stdout or "").strip()
            if proc.returncode != 0 or answer.startswith(("NOAUTH", "WRONGPASS", "NOPERM", "ERR")):
                raise OffsiteError(f"redis-cli {args[0]} in {container} failed: {(proc.stderr or answer).strip()}")
            return answer

        before = cli("LASTSAVE")
        deadline = time.monotonic() + timeout
        while True:
            answer = cli("BGSAVE")
            if "already in progress" not in answer.lower() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            if cli("LASTSAVE") != before:
                break
            time.sleep(0.2)
        else:
            raise OffsiteError(f"Redis in {container} did not finish BGSAVE within {timeout} s; no copy was made")
        info = cli("INFO", "persistence")
        if "rdb_last_bgsave_status:ok" not in info:
            raise OffsiteError(f"Redis in {container} reports a failed BGSAVE (disk full?); no copy was made")
        rdir = cli("CONFIG", "GET", "dir").splitlines()[-1]
        rfile = cli("CONFIG", "GET", "dbfilename").splitlines()[-1]
        dest = os.path.join(stage, "redis", container)
        os.makedirs(dest, exist_ok=True)
        proc = self._run(
            ["docker", "cp", f"{container}:{rdir}/{rfile}", os.path.join(dest, "dump.rdb")],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise OffsiteError(f"copying {container}'s {rdir}/{rfile} failed: {proc.stderr.strip()}")
        return {"container": container, "file": "dump.rdb"}

    def volume_path(self, volume):
        proc = self._run(
            ["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", volume],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise OffsiteError(f"docker volume {volume} is not there: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def backup(self):
        """One snapshot of everything. Never forget or prune: the endpoint
        refuses deletions from this server; the prune run does retention."""
        started = time.time()
        sid = server_id(self.cfg)
        snaps = self.ensure_repository()
        others = other_servers(snaps, sid)
        if others:
            raise OffsiteError(
                f"the repository {self.cfg['repository']} holds another server's backups (id {', '.join(others)}); "
                f"this server is {sid}. Recover this server from it with playbooks/recover.yml, or give this server "
                "its own offsite_repository. Nothing was written."
            )
        stage = self.cfg["stage_dir"]
        if os.path.isdir(stage):
            shutil.rmtree(stage)
        os.makedirs(stage, mode=0o700)
        manifest = {
            "server_id": sid,
            "time": started,
            "volumes": {},
            "redis": [],
            "paths": list(self.cfg.get("paths") or []),
        }
        for entry in self.cfg.get("redis") or []:
            manifest["redis"].append(self.stage_redis(entry, stage))
        paths = [p for p in manifest["paths"] if os.path.exists(p)] + [stage]
        for volume in self.cfg.get("volumes") or []:
            path = self.volume_path(volume)
            manifest["volumes"][volume] = path
            paths.append(path)
        with open(os.path.join(stage, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, sort_keys=True)
        out = self.restic("backup", "--json", "--tag", "onebox", "--tag", f"server-id:{sid}", *paths)
        summary = {}
        for line in out.splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        return {
            "snapshot": summary.get("snapshot_id", ""),
            "retention_applied": retention_applied(snaps, sid),
            "bytes_added": summary.get("data_added", 0),
            "files": summary.get("total_files_processed", 0),
            "seconds": round(time.time() - started, 1),
        }

    def forget(self, now=None, dry_run=False, attempts=5, pause=20.0):
        """The prune run's retention (offsite_keep_*), per server (its
        server-id tag), with credentials that may delete. Refused when a
        snapshot is dated in the future. A repository locked by a backup
        is tried again, ATTEMPTS times."""
        snaps = [s for s in self.snapshots() if "onebox" in (s.get("tags") or [])]
        ahead = future_snapshots(snaps, time.time() if now is None else now)
        if ahead:
            raise OffsiteError(
                f"{len(ahead)} snapshot(s) are dated in the future ({', '.join(s.get('short_id', '?') for s in ahead)}"
                f" at {ahead[0].get('time')}): a wrong clock on the server, or snapshots added to push the real ones "
                "out of retention. Check them (restic snapshots) and forget them by hand. Nothing was deleted."
            )
        args = ["forget", "--json", "--tag", "onebox", "--group-by", "tags", *retention_args(self.cfg)]
        args += ["--dry-run"] if dry_run else ["--prune"]
        for attempt in range(attempts):
            try:
                out = self.restic(*args)
                break
            except OffsiteError as exc:
                if "locked by another run" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(pause)
        removed, kept = [], []
        for line in out.splitlines():
            # The JSON of forget; prune's progress lines ("[0:00] ...") are not.
            try:
                groups = json.loads(line) if line.startswith("[") else []
            except ValueError:
                groups = []
            if isinstance(groups, list):
                for group in groups:
                    removed += [x.get("short_id") or x.get("id", "")[:8] for x in group.get("remove") or []]
                    kept += [x.get("short_id") or x.get("id", "")[:8] for x in group.get("keep") or []]
        return {"snapshots_before": len(snaps), "snapshots_removed": removed, "snapshots_kept": len(kept)}

    def mark_retention(self, now=None):
        """The marker the servers read (retention_applied): a snapshot of a
        few bytes tagged RETENTION_TAG, then the older markers forgotten
        (their bytes go with the next prune)."""
        stamp = time.time() if now is None else now
        body = json.dumps({"retention_applied": stamp}) + "\n"
        proc = self._run(
            self.restic_argv(
                "backup", "--stdin", "--stdin-filename", "onebox-prune.json", "--tag", RETENTION_TAG,
                "--host", "onebox-prune",
            ),
            env=self.env(),
            input=body,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise OffsiteError(redact(explain_restic(proc.stderr, self.cfg["repository"]), self.secrets()))
        self.restic("forget", "--tag", RETENTION_TAG, "--keep-last", "1")
        return stamp

    def check(self, read_data_subset=""):
        args = ["check"] + ([f"--read-data-subset={read_data_subset}"] if read_data_subset else ["--read-data"])
        self.restic(*args)

    # WAL mirror -----------------------------------------------------------
    def rsync(self, *args):
        argv = ["rsync", "-e", " ".join(shlex.quote(a) for a in self.ssh_argv()), *args]
        return self._run(argv, capture_output=True, text=True, timeout=3600, check=False)

    def mirror(self):
        target = self.cfg.get("wal_target") or ""
        if not target:
            raise OffsiteError("no WAL mirror is set (offsite_wal_target)")
        return Mirror(target, self.rsync)

    def wal_guard(self, mirror, sid):
        """Refuse another server's mirror; mark a new one as this server's."""
        theirs = mirror.read("server-id")
        if theirs is not None:
            theirs = theirs.decode(errors="replace").strip()
            if theirs != sid:
                raise OffsiteError(
                    f"the WAL mirror {mirror.target} belongs to server {theirs}; this server is {sid}. Recover this "
                    "server from it with playbooks/recover.yml, or give it its own target. Nothing was written."
                )
            return
        with tempfile.TemporaryDirectory() as tmp:
            with open(f"{tmp}/server-id", "w", encoding="utf-8") as fh:
                fh.write(sid + "\n")
            put = self.rsync("--ignore-existing", "--mkpath", f"{tmp}/server-id", mirror.path("server-id"))
            if put.returncode != 0:
                raise OffsiteError(f"cannot write to the WAL mirror {mirror.target}: {put.stderr.strip()[-300:]}")

    def wal_sync(self, list_backups, stanza, done=None, now=None):
        """Add what is new in the pgBackRest repository to the mirror, never
        deleting or overwriting a file there: WAL segments, the base backups
        pgBackRest lists as complete (each once), then, when they changed,
        the info files under a new name with their index.

        LIST_BACKUPS(): the complete backups (pitr.parse_info's), asked
        AFTER the info files are read, so it names every backup they name.
        DONE: what earlier runs sent ({labels, info_digest}). Returns the
        new DONE."""
        repo = (self.cfg.get("wal_repo") or "").rstrip("/")
        if not repo:
            raise OffsiteError("no pgBackRest repository to mirror (postgres_pitr_enabled)")
        done = dict(done or {})
        sid = server_id(self.cfg)
        mirror = self.mirror()
        self.wal_guard(mirror, sid)
        infos = {}
        for kind in ("archive", "backup"):
            top = os.path.join(repo, kind)
            for name in sorted(os.listdir(top)) if os.path.isdir(top) else []:
                for info in INFO_NAMES:
                    path = os.path.join(top, name, info)
                    if info.startswith(kind) and os.path.isfile(path):
                        with open(path, "rb") as fh:
                            infos[f"{kind}/{name}/{info}"] = fh.read()
        backups = [b for b in list_backups() if not b.get("error") and b.get("stop")]
        labels = [b["label"] for b in backups]
        new = [label for label in labels if label not in (done.get("labels") or [])]
        rules = ["--exclude=*.pgbackrest.tmp", "--exclude=*.info", "--exclude=*.info.copy", "--include=/archive/***"]
        rules += [
            "--include=/backup/",
            f"--include=/backup/{stanza}/",
            f"--include=/backup/{stanza}/backup.history/***",
        ]
        rules += [f"--include=/backup/{stanza}/{label}/***" for label in new] + ["--exclude=*"]
        sent = self.rsync(
            "-rt", "--ignore-existing", "--mkpath", "--chmod=D0700,F0600", *rules, f"{repo}/", mirror.path(MIRROR_REPO)
        )
        if sent.returncode != 0:
            raise OffsiteError(f"copying WAL to {mirror.target} failed: {sent.stderr.strip()[-300:]}")
        done["labels"] = sorted(set(done.get("labels") or []) & set(labels) | set(new))
        digest = info_digest(infos)
        if infos and digest != done.get("info_digest"):
            when = time.time() if now is None else now
            version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}-{digest[:12]}"
            with tempfile.TemporaryDirectory() as tmp:
                for rel, data in infos.items():
                    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                    with open(os.path.join(tmp, rel), "wb") as fh:
                        fh.write(data)
                with open(os.path.join(tmp, INDEX), "w", encoding="utf-8") as fh:
                    json.dump(index_of(stanza, backups, sid, when), fh, sort_keys=True)
                put = self.rsync(
                    "-rt",
                    "--ignore-existing",
                    "--mkpath",
                    "--chmod=D0700,F0600",
                    f"{tmp}/",
                    mirror.path(f"{MIRROR_INFO}/{version}") + "/",
                )
            if put.returncode != 0:
                raise OffsiteError(f"copying the info files to {mirror.target} failed: {put.stderr.strip()[-300:]}")
            done["info_digest"] = digest
            done["info_version"] = version
        return done

    def info_versions(self, mirror, root=None):
        """[(name, valid, index or None)] of the info versions in the mirror,
        read from ROOT (a local copy of TARGET/info) or fetched into one."""
        with tempfile.TemporaryDirectory() as tmp:
            if root is None:
                root = os.path.join(tmp, "info")
                if not mirror.listing(MIRROR_INFO):
                    return []
                mirror.download(MIRROR_INFO, root)
            out = []
            for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
                files = {}
                for top, _dirs, names in os.walk(os.path.join(root, name)):
                    for n in names:
                        path = os.path.join(top, n)
                        with open(path, "rb") as fh:
                            files[os.path.relpath(path, os.path.join(root, name))] = fh.read()
                ok = version_valid(name, files)
                try:
                    index = json.loads(files[INDEX]) if INDEX in files else None
                except ValueError:
                    index = None
                out.append((name, ok, index))
            return out

    def wal_fetch(self, dest):
        """Copy the mirror down into DEST: the repository, then the newest
        complete version of its info files in place. Returns
        {server_id, info_version}."""
        mirror = self.mirror()
        os.makedirs(dest, exist_ok=True)
        if mirror.remote:
            got = self.rsync("-rt", mirror.path(MIRROR_REPO) + "/", f"{dest}/")
            if got.returncode != 0:
                raise OffsiteError(
                    f"cannot copy the WAL mirror {mirror.target} down: {got.stderr.strip()[-300:]}. "
                    "Nothing was changed."
                )
        else:
            copy_tree(mirror.path(MIRROR_REPO), dest)
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "info")
            if mirror.listing(MIRROR_INFO):
                mirror.download(MIRROR_INFO, root)
            versions = self.info_versions(mirror, root=root)
            good = sorted((n for n, ok, _i in versions if ok), reverse=True)
            chosen = good[0] if good else ""
            if chosen:
                for top, _dirs, names in os.walk(os.path.join(root, chosen)):
                    for n in names:
                        rel = os.path.relpath(os.path.join(top, n), os.path.join(root, chosen))
                        if rel == INDEX:
                            continue
                        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                        shutil.copyfile(os.path.join(top, n), os.path.join(dest, rel))
            elif not os.path.exists(os.path.join(dest, "backup")):
                raise OffsiteError(
                    f"the WAL mirror {mirror.target} holds no pgBackRest repository. Nothing was changed."
                )
        sid = mirror.read("server-id")
        return {"server_id": sid.decode().strip() if sid else "", "info_version": chosen}

    def wal_prune(self, keep_full, dry_run=False):
        """The prune run on the WAL mirror (credentials that may delete)."""
        mirror = self.mirror()
        listing = mirror.listing()
        if not listing:
            return {"wal_mirror": "empty", "deleted_files": 0, "deleted_backups": []}
        versions = self.info_versions(mirror)
        plan = plan_wal_prune([p for p, kind in listing.items() if kind == "f"], versions, keep_full)
        if not dry_run:
            mirror.delete(files=plan["files"], trees=plan["backups"] + [f"{MIRROR_INFO}/{v}" for v in plan["versions"]])
        return {
            "deleted_backups": [p.rsplit("/", 1)[-1] for p in plan["backups"]],
            "deleted_files": len(plan["files"]),
            "deleted_info_versions": len(plan["versions"]),
            "kept_backups": plan["kept"],
            "wal_from": plan["wal_from"],
            "notes": plan["notes"],
            "dry_run": dry_run,
        }

    # append-only, as seen from here ------------------------------------------
    def probe(self):
        """Whether the copies refuse a deletion from this server's
        credentials, without deleting anything of value: {restic, wal} ->
        True (refused), False (allowed) or None (cannot tell)."""
        out = {"restic": self._probe_restic()}
        if self.cfg.get("wal_target"):
            out["wal"] = self._probe_wal()
        return out

    def _probe_wal(self):
        mirror = self.mirror()
        with tempfile.TemporaryDirectory() as empty:
            # An empty directory with --delete into a directory of its own:
            # deletes nothing anywhere, but an append-only host refuses it.
            proc = self.rsync("-r", "--delete", "--mkpath", f"{empty}/", mirror.path(".onebox-probe") + "/")
        if proc.returncode == 0:
            return False
        text = (proc.stderr or "").lower()
        return True if ("disabled" in text or "not allowed" in text or "refused" in text) else None

    def _probe_restic(self):
        repo = self.cfg["repository"]
        if not repo.startswith("rest:"):
            # sftp: and s3: keys can delete unless the storage says otherwise
            # (S3: a key without DeleteObject, and object lock); not probed.
            return None
        # Deleting a key that does not exist: an append-only endpoint
        # refuses it (403), any other says it is not there (404).
        request = urllib.request.Request(repo[len("rest:") :].rstrip("/") + "/keys/" + "0" * 64, method="DELETE")
        if self.cfg.get("rest_user"):
            token = base64.b64encode(f"{self.cfg['rest_user']}:{self._rest_password()}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=self.cfg.get("cacert") or None)
        try:
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
            with opener.open(request, timeout=15):
                return False
        except urllib.error.HTTPError as exc:
            return {403: True, 404: False}.get(exc.code)
        except (OSError, ValueError):
            return None

    # restore --------------------------------------------------------------
    def fetch(self, dest, snapshot="latest"):
        """Verify the whole repository (every byte: a tampered or cut copy
        fails here, before anything is touched), then restore SNAPSHOT into
        DEST. Returns the snapshot's manifest."""
        self.check()
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.makedirs(dest, mode=0o700)
        self.restic("restore", snapshot, "--tag", "onebox", "--target", dest)
        stage = self.cfg["stage_dir"]
        path = os.path.join(dest, stage.lstrip("/"), MANIFEST)
        try:
            with open(path, encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError):
            raise OffsiteError(f"the snapshot has no readable {MANIFEST}; it was not made by onebox-dr") from None
        manifest["root"] = dest
        return manifest


def copy_tree(src, dest):
    """Copy SRC's contents into DEST keeping owners, modes and times (rsync -a)."""
    os.makedirs(dest, exist_ok=True)
    proc = subprocess.run(
        ["rsync", "-a", "--numeric-ids", f"{src.rstrip('/')}/", f"{dest.rstrip('/')}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise OffsiteError(f"copying {src} to {dest} failed: {proc.stderr.strip()}")
