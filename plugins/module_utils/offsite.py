# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The off-site copy of a whole server, and getting it back.

restic (encrypted, deduplicated, verifiable) copies what a server holds
besides the database's WAL: the dumps, the apps' named volumes (read in
place, the apps keep running), a consistent Redis snapshot (BGSAVE, then
wait for it), /etc/onebox and the release histories. The pgBackRest
repository (WAL and base backups, encrypted by pgBackRest) is mirrored
with rsync over SSH every few seconds, so little is lost with the server.

Both refuse to write over another server's copy: each server has an id
(/etc/onebox/server-id); snapshots carry it as a tag and the WAL mirror
holds it in a file. A new server gets the old id only by recovering it.

One owner: this module writes and reads the settings file
(/etc/onebox/offsite.json is written by the offsite role from the same
keys, see SETTINGS), the manifest inside each snapshot and the metrics.
Standard library only: the on-server ``onebox-dr`` program uses it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time

SETTINGS = (
    "repository",  # sftp:user@host:/path, s3:https://host/bucket/path, or a local path
    "password_file",
    "ssh_key",
    "known_hosts",
    "ssh_port",
    "s3_env_file",  # AWS_ACCESS_KEY_ID=... / AWS_SECRET_ACCESS_KEY=...
    "cache_dir",
    "paths",  # plain directories: dumps, /etc/onebox, /var/lib/onebox...
    "volumes",  # Docker volume names
    "redis",  # Redis container names
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "wal_repo",  # the pgBackRest repository directory ("" = no WAL mirror)
    "wal_target",  # user@host:/path of its mirror
    "server_id_file",
    "stage_dir",
    "metrics_dir",
    "max_ages",  # backup, check, wal -> seconds, for the alerts
)
MANIFEST = "onebox-manifest.json"


class OffsiteError(Exception):
    """A failed step; the message says what to do. Nothing was overwritten."""


def explain_restic(stderr, repository):
    """A sentence a tired person can act on, from restic's error text."""
    text = (stderr or "").strip()
    low = text.lower()
    if "wrong password" in low:
        return f"restic: wrong password for the repository {repository} (backup_restic_password in Vault)."
    if "is there a repository at the following location" in low or "unable to open config file" in low:
        return f"restic: there is no repository at {repository} yet (or the path is wrong)."
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
    return f"restic failed on {repository}: {text[-600:]}"


def retention_args(cfg):
    out = []
    for key in ("last", "hourly", "daily", "weekly", "monthly"):
        value = int(cfg.get(f"keep_{key}") or 0)
        if value > 0:
            out += [f"--keep-{key}", str(value)]
    if not out:
        raise OffsiteError("restic retention keeps nothing: set at least one backup_restic_keep_* above 0")
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
        if kind == "backup" and entry.get("bytes_added") is not None:
            lines += [
                "# TYPE onebox_offsite_backup_bytes_added gauge",
                f"onebox_offsite_backup_bytes_added {int(entry['bytes_added'])}",
                "# TYPE onebox_offsite_backup_duration_seconds gauge",
                f"onebox_offsite_backup_duration_seconds {float(entry.get('seconds') or 0):.1f}",
            ]
    return "\n".join(lines) + "\n"


class Offsite:
    def __init__(self, cfg, run=subprocess.run):
        missing = [k for k in ("repository", "password_file", "server_id_file", "stage_dir") if not cfg.get(k)]
        if missing:
            raise OffsiteError(f"the off-site settings lack {', '.join(missing)}")
        self.cfg = cfg
        self._run = run

    # restic ---------------------------------------------------------------
    def env(self):
        env = dict(os.environ)
        env["RESTIC_REPOSITORY"] = self.cfg["repository"]
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
            argv += ["-i", self.cfg["ssh_key"]]
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
        return argv + list(args)

    def restic(self, *args, timeout=6 * 3600):
        proc = self._run(
            self.restic_argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise OffsiteError(explain_restic(proc.stderr, self.cfg["repository"]))
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
    def stage_redis(self, container, stage, timeout=120):
        """A consistent copy of CONTAINER's data: BGSAVE, wait until
        LASTSAVE moves and the save is reported ok, then copy the RDB."""

        def cli(*args):
            proc = self._run(
                ["docker", "exec", container, "redis-cli", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0:
                raise OffsiteError(f"redis-cli {args[0]} in {container} failed: {(proc.stderr or proc.stdout).strip()}")
            return proc.stdout.strip()

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
        """One snapshot of everything; then retention. Returns a summary."""
        started = time.time()
        sid = server_id(self.cfg)
        snaps = self.ensure_repository()
        others = other_servers(snaps, sid)
        if others:
            raise OffsiteError(
                f"the repository {self.cfg['repository']} holds another server's backups (id {', '.join(others)}); "
                f"this server is {sid}. Recover this server from it with playbooks/recover.yml, or give this server "
                "its own backup_restic_repository. Nothing was written."
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
        for container in self.cfg.get("redis") or []:
            manifest["redis"].append(self.stage_redis(container, stage))
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
        self.restic("forget", "--tag", f"server-id:{sid}", "--group-by", "tags", "--prune", *retention_args(self.cfg))
        return {
            "snapshot": summary.get("snapshot_id", ""),
            "bytes_added": summary.get("data_added", 0),
            "files": summary.get("total_files_processed", 0),
            "seconds": round(time.time() - started, 1),
        }

    def check(self, read_data_subset=""):
        args = ["check"] + ([f"--read-data-subset={read_data_subset}"] if read_data_subset else ["--read-data"])
        self.restic(*args)

    # WAL mirror -----------------------------------------------------------
    def rsync(self, *args):
        argv = ["rsync", "-e", " ".join(shlex.quote(a) for a in self.ssh_argv()), *args]
        proc = self._run(argv, capture_output=True, text=True, timeout=3600, check=False)
        return proc

    def wal_sync(self):
        """Mirror the pgBackRest repository: new files only, never a
        deletion (pgBackRest's own expiry runs here and in the daily full
        mirror). Refused when the mirror belongs to another server."""
        target = (self.cfg.get("wal_target") or "").rstrip("/")
        repo = (self.cfg.get("wal_repo") or "").rstrip("/")
        if not target or not repo:
            raise OffsiteError("no WAL mirror is set (backup_offsite_wal_target)")
        sid = server_id(self.cfg)
        with tempfile.TemporaryDirectory() as tmp:
            got = self.rsync(f"{target}/server-id", f"{tmp}/server-id")
            if got.returncode == 0:
                with open(f"{tmp}/server-id", encoding="utf-8") as fh:
                    theirs = fh.read().strip()
                if theirs != sid:
                    raise OffsiteError(
                        f"the WAL mirror {target} belongs to server {theirs}; this server is {sid}. Recover this "
                        "server from it with playbooks/recover.yml, or give it its own target. Nothing was written."
                    )
            elif got.returncode not in (23,):
                raise OffsiteError(f"cannot reach the WAL mirror {target}: {got.stderr.strip()[-300:]}")
            else:
                with open(f"{tmp}/server-id", "w", encoding="utf-8") as fh:
                    fh.write(sid + "\n")
                put = self.rsync("--mkpath", f"{tmp}/server-id", f"{target}/server-id")
                if put.returncode != 0:
                    raise OffsiteError(f"cannot write to the WAL mirror {target}: {put.stderr.strip()[-300:]}")
        # Segments and backup files first, the info files (which name them) last.
        first = self.rsync(
            "-a", "--mkpath", "--exclude=*.info", "--exclude=*.info.copy", f"{repo}/", f"{target}/pgbackrest/"
        )
        if first.returncode != 0:
            raise OffsiteError(f"copying WAL to {target} failed: {first.stderr.strip()[-300:]}")
        second = self.rsync("-a", f"{repo}/", f"{target}/pgbackrest/")
        if second.returncode != 0:
            raise OffsiteError(f"copying WAL to {target} failed: {second.stderr.strip()[-300:]}")

    def wal_fetch(self, dest):
        """Copy the mirror down into DEST (a new, empty directory)."""
        target = (self.cfg.get("wal_target") or "").rstrip("/")
        os.makedirs(dest, exist_ok=True)
        got = self.rsync("-a", f"{target}/pgbackrest/", f"{dest}/")
        if got.returncode != 0:
            raise OffsiteError(
                f"cannot copy the WAL mirror {target} down: {got.stderr.strip()[-300:]}. Nothing was changed."
            )
        sid = self.rsync(f"{target}/server-id", f"{dest}.server-id")
        return open(f"{dest}.server-id", encoding="utf-8").read().strip() if sid.returncode == 0 else ""

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
