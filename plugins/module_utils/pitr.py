# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery of the PostgreSQL container with pgBackRest.

pgBackRest runs inside the database container (the postgres role builds
the image: the user's PostgreSQL image plus Debian's pgbackrest), so
PostgreSQL's archive_command pushes each WAL segment to the repository,
a host directory mounted at the same path. This module decides: which
backup type to take, where a restore stops ("just before release X"),
whether a target can be reached at all, and the metrics; it also runs the
restore (stop, keep a copy, restore, start, wait). Standard library only:
the on-server ``onebox-dr`` program uses it too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time

DATA_DIR = "/var/lib/postgresql/data"


class PitrError(Exception):
    """A step that cannot go on; the message says what to do and what was left as it was."""


def parse_time(text):
    """A UTC datetime from '2026-11-25T10:00:00Z', '2026-11-25 10:00:00+00'
    or a Unix time; PitrError when it is none of those."""
    if isinstance(text, (int, float)):
        return dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
    value = str(text).strip()
    if value.replace(".", "", 1).isdigit():
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
    value = value.replace("Z", "+00:00").replace(" ", "T", 1)
    if len(value) >= 3 and value[-3] in "+-" and value[-2:].isdigit() and ":" not in value[-6:]:
        value += ":00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PitrError(
            f"'{text}' is not a time; give one such as 2026-11-25T10:00:00Z (UTC). Nothing was changed."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def pg_time(when):
    """The form pgBackRest's --target takes."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def _went_live(history, version):
    """Indexes of the records where VERSION went live (a change of version:
    the same version released again, a redeploy or recover.yml bringing the
    last release back, is not its going live)."""
    out, previous = [], ""
    for number, release in enumerate(history):
        current = release.get("version") or ""
        if current == version and previous != version and release.get("time"):
            out.append(number)
        previous = current or previous
    return out


def release_start(history, version, audit=()):
    """(moment, what it is) just before VERSION last went live: just before
    its migration first ran, from the app's audit log (AUDIT: release_log's
    AuditEntry records, oldest first). The markers are those of VERSION
    between the release record before and the record where it went live:
    the first ``migrate-start version=VERSION`` (an attempt that failed
    after its migration already changed the data), else the first
    ``deploy-start version=VERSION`` (a deploy without a migration). The
    release record itself is written after the migration and the switch, so
    it is only the last resort (a release that ran no deploy, such as a
    rollback), one second before it."""
    went = _went_live(history, version)
    if not went:
        known = sorted({r.get("version") for r in history if r.get("version")})
        raise PitrError(
            f"release {version!r} is not in the release history (known: {', '.join(known) or 'none'}). "
            "Nothing was changed."
        )
    record = parse_time(history[went[-1]]["time"])
    earlier = [parse_time(r["time"]) for r in history[: went[-1]] if r.get("time")]
    since = max(earlier) if earlier else None
    token = f"version={version}"
    for action in ("migrate-start", "deploy-start"):
        marks = [
            e.time
            for e in audit or ()
            if e.action == action
            and token in str(e.detail).split()
            and e.time <= record
            and (since is None or e.time >= since)
        ]
        if marks:
            # The audit time is whole seconds, at or before the marker was
            # written: every commit of the migration comes after it.
            return min(marks), f"{action} of {version}"
    return record - dt.timedelta(seconds=1), f"release record of {version} (no migration marker)"


def before_release(history, version, audit=()):
    """The moment just before VERSION last went live (see release_start)."""
    return release_start(history, version, audit)[0]


def last_release(history):
    """The newest release that went live ('' when none): what a recovered
    server deploys again."""
    for release in reversed(history or []):
        if release.get("version"):
            return release["version"]
    return ""


def release_at(history, when):
    """The version that was live at WHEN (a datetime; None: the last one),
    from an app's release history (oldest first): what a recovery to that
    moment deploys. '' when none was yet."""
    if when is None:
        return last_release(history)
    live = ""
    for release in history or []:
        if release.get("version") and release.get("time") and parse_time(release["time"]) <= when:
            live = release["version"]
    return live


def dump_at(backups, when):
    """The dump a recovery to WHEN restores (a datetime; None: the newest):
    the newest verified one completed at or before WHEN, never one dated in
    the future. BACKUPS: pg_backup.list_backups entries (several prefixes:
    scheduled and pre-deploy dumps alike). None when there is none."""
    good = [b for b in backups if b.get("verified") and not b.get("future") and (when is None or b["time"] <= when)]
    return max(good, key=lambda b: (b["time"], b["name"])) if good else None


def parse_info(text, stanza):
    """pgBackRest's `info --output=json` for STANZA: its status, backups
    (oldest first: label, type, start, stop as Unix times, prior, the WAL
    segments each starts and stops at) and archive range."""
    try:
        data = json.loads(text or "[]")
    except ValueError:
        raise PitrError(f"pgbackrest info gave no JSON: {str(text)[:200]!r}") from None
    for entry in data:
        if entry.get("name") != stanza:
            continue
        backups = [
            {
                "label": b.get("label"),
                "type": b.get("type"),
                "start": (b.get("timestamp") or {}).get("start"),
                "stop": (b.get("timestamp") or {}).get("stop"),
                "error": bool(b.get("error")),
                "prior": b.get("prior"),
                # The WAL it needs: from the segment it started in.
                "archive_start": (b.get("archive") or {}).get("start") or "",
                "archive_stop": (b.get("archive") or {}).get("stop") or "",
            }
            for b in entry.get("backup") or []
        ]
        archives = entry.get("archive") or []
        return {
            "status": (entry.get("status") or {}).get("code", 99),
            "message": (entry.get("status") or {}).get("message", ""),
            "backups": sorted(backups, key=lambda b: b["stop"] or 0),
            "wal_min": min((a.get("min") or "" for a in archives), default=""),
            "wal_max": max((a.get("max") or "" for a in archives), default=""),
        }
    return {"status": 1, "message": "missing stanza", "backups": [], "wal_min": "", "wal_max": ""}


def choose_type(backups, now, full_every_days=7):
    """'full' when there is no good full backup newer than FULL_EVERY_DAYS,
    else 'diff' (changes since that full)."""
    fulls = [b for b in backups if b["type"] == "full" and not b["error"] and b["stop"]]
    if not fulls or now - max(b["stop"] for b in fulls) >= full_every_days * 86400:
        return "full"
    return "diff"


def check_target(backups, target):
    """Refuse a point no base backup can reach: before the oldest backup ended."""
    good = [b for b in backups if not b["error"] and b["stop"]]
    if not good:
        raise PitrError("the repository holds no base backup yet, so there is nothing to restore. Nothing was changed.")
    if target is not None and target.timestamp() > time.time() + 60:
        raise PitrError(f"{pg_time(target)} is in the future; give a past time (UTC). Nothing was changed.")
    oldest = min(b["stop"] for b in good)
    if target is not None and target.timestamp() < oldest:
        raise PitrError(
            f"{pg_time(target)} is before the oldest base backup ended ({pg_time(parse_time(oldest))}, "
            f"{min(good, key=lambda b: b['stop'])['label']}); WAL before it is not kept. "
            "Pick a later time. Nothing was changed."
        )


def metrics(stanza, info, archiver, now):
    """Prometheus text: the newest backup, WAL archiving success and failure
    from pg_stat_archiver (ARCHIVER: archived_count, failed_count,
    last_archived_time, last_failed_time as Unix times or None)."""
    good = [b for b in info["backups"] if not b["error"] and b["stop"]]
    lab = f'stanza="{stanza}"'
    lines = [
        "# HELP onebox_pitr_last_backup_timestamp_seconds End of the newest good pgBackRest base backup.",
        "# TYPE onebox_pitr_last_backup_timestamp_seconds gauge",
        f"onebox_pitr_last_backup_timestamp_seconds{{{lab}}} {max((b['stop'] for b in good), default=0)}",
        "# HELP onebox_pitr_backups Good base backups in the repository.",
        "# TYPE onebox_pitr_backups gauge",
        f"onebox_pitr_backups{{{lab}}} {len(good)}",
        "# HELP onebox_pitr_stanza_ok 1 when pgbackrest info reports the stanza ok.",
        "# TYPE onebox_pitr_stanza_ok gauge",
        f"onebox_pitr_stanza_ok{{{lab}}} {1 if info['status'] == 0 else 0}",
    ]
    if archiver is not None:
        for key, help_text in (
            ("archived_count", "WAL segments archived since the server started."),
            ("failed_count", "Failed WAL archive attempts since the server started."),
        ):
            lines += [
                f"# HELP onebox_pitr_wal_{key} {help_text}",
                f"# TYPE onebox_pitr_wal_{key} counter",
                f"onebox_pitr_wal_{key}{{{lab}}} {int(archiver.get(key) or 0)}",
            ]
        lines += [
            "# HELP onebox_pitr_wal_ready_segments WAL segments PostgreSQL has finished and not yet archived.",
            "# TYPE onebox_pitr_wal_ready_segments gauge",
            f"onebox_pitr_wal_ready_segments{{{lab}}} {int(archiver.get('ready_segments') or 0)}",
        ]
        for key in ("last_archived_time", "last_failed_time"):
            lines += [
                f"# TYPE onebox_pitr_wal_{key}stamp_seconds gauge",
                f"onebox_pitr_wal_{key}stamp_seconds{{{lab}}} {float(archiver.get(key) or 0):.0f}",
            ]
    lines += [
        "# TYPE onebox_pitr_metrics_timestamp_seconds gauge",
        f"onebox_pitr_metrics_timestamp_seconds{{{lab}}} {now:.0f}",
    ]
    return "\n".join(lines) + "\n"


# PostgreSQL's view of WAL archiving, one row: what metrics() reads.
ARCHIVER_SQL = (
    "SELECT archived_count, failed_count, coalesce(extract(epoch FROM last_archived_time), 0), "
    "coalesce(extract(epoch FROM last_failed_time), 0), "
    "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') FROM pg_stat_archiver"
)


def parse_archiver(row):
    """ARCHIVER_SQL's row (psql -A -t -F '|') as the dict metrics() takes."""
    a, f, la, lf, ready = (row.strip().split("|") + ["0"] * 5)[:5]
    return {
        "archived_count": a,
        "failed_count": f,
        "last_archived_time": la,
        "last_failed_time": lf,
        "ready_segments": ready,
    }


def move_contents(src, dest):
    """Move everything in directory SRC into directory DEST (same file system)."""
    for name in os.listdir(src):
        shutil.move(os.path.join(src, name), os.path.join(dest, name))


class Cluster:
    """The database container and pgBackRest inside it."""

    def __init__(
        self, container, stanza, image, volume, repo, conf_dir, user="postgres", run=subprocess.run, repo_path=None
    ):
        self.container = container
        self.stanza = stanza
        self.image = image
        self.volume = volume
        self.repo = repo
        # Where pgbackrest.conf says the repository is (in the container).
        self.repo_path = repo_path or repo
        self.conf_dir = conf_dir
        self.user = user
        self._run = run

    def sh(self, argv, check=True, timeout=3600):
        proc = self._run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise PitrError(
                f"{' '.join(argv[:6])}... failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-600:]}"
            )
        return proc

    def pgbackrest(self, *args, check=True):
        return self.sh(
            ["docker", "exec", "-u", "postgres", self.container, "pgbackrest", f"--stanza={self.stanza}", *args], check
        )

    def info(self):
        proc = self.pgbackrest("--output=json", "info", check=False)
        if proc.returncode != 0:
            raise PitrError(f"pgbackrest info failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return parse_info(proc.stdout, self.stanza)

    def _psql_argv(self, sql):
        return [
            "docker",
            "exec",
            "-u",
            "postgres",
            self.container,
            "psql",
            "-U",
            self.user,
            "-d",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-F",
            "|",
            "-c",
            sql,
        ]

    def psql(self, sql):
        return self.sh(self._psql_argv(sql)).stdout.strip()

    def archiver(self):
        return parse_archiver(self.psql(ARCHIVER_SQL))

    def backup(self, now=None, full_every_days=7):
        kind = choose_type(self.info()["backups"], now or time.time(), full_every_days)
        self.pgbackrest(f"--type={kind}", "backup")
        return kind

    def mountpoint(self):
        out = self.sh(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", self.volume]).stdout.strip()
        if not out:
            raise PitrError(f"docker volume {self.volume} has no mount point")
        return out

    def restore(self, target=None, keep_dir=None, wait=900):
        """Restore the newest backup and replay WAL to TARGET (a datetime;
        None = all of it). The data directory is moved to KEEP_DIR first
        (never deleted). Returns what it did."""
        info = self.info_offline()
        check_target(info["backups"], target)
        data = self.mountpoint()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        keep = keep_dir or f"{os.path.dirname(data.rstrip('/'))}/pre-restore-{stamp}"
        self.sh(["docker", "stop", "-t", "60", self.container])
        os.makedirs(keep, mode=0o700)
        move_contents(data, keep)
        args = ["--type=time", f"--target={pg_time(target)}", "--target-action=promote"] if target else []
        proc = self._restore(args)
        if proc.returncode != 0:
            # Put the old data back: the failed restore changes nothing.
            self._put_back(data, keep)
            self.sh(["docker", "start", self.container], check=False)
            raise PitrError(
                f"pgbackrest restore failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}. "
                "The data directory was put back as it was and the database started again."
            )
        started = time.time()
        self.sh(["docker", "start", self.container])
        try:
            self.wait_promoted(wait, since=started)
        except PitrError as exc:
            # Recovery failed (the target is past the end of the WAL, a
            # segment is missing): the data as it was comes back.
            self.sh(["docker", "stop", "-t", "30", self.container], check=False)
            self._put_back(data, keep)
            self.sh(["docker", "start", self.container], check=False)
            raise PitrError(
                f"{exc} The data directory was put back as it was and the database started again."
            ) from None
        return {"kept_copy": keep, "target": pg_time(target) if target else "latest"}

    @staticmethod
    def _put_back(data, keep):
        for name in os.listdir(data):
            path = os.path.join(data, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        move_contents(keep, data)
        os.rmdir(keep)

    def drill(self, query="", wait=900, now=None):
        """The weekly proof that the repository restores: the newest backup
        and its WAL restored to a point in time (now) into a scratch volume,
        started with no network, QUERY run on it (empty: it answers), then
        removed. The repository is mounted read-only; the live database only
        gets an empty transaction and a WAL switch."""
        good = [b for b in self.info()["backups"] if not b["error"] and b["stop"]]
        if not good:
            raise PitrError("the repository holds no base backup yet; nothing to drill")
        # The point: now. Recovery stops at the first commit after it, so one
        # is made (an empty transaction with an id) and its segment archived.
        target = parse_time(time.time() if now is None else now)
        time.sleep(1)
        self.psql("SELECT txid_current()")
        segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 120
        while self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < segment[:24]:
            if time.monotonic() > deadline:
                raise PitrError(f"WAL segment {segment} was not archived within 120 s; see WalArchivingFailing")
            time.sleep(0.5)
        name, volume = f"{self.container}-drill", f"{self.volume}-drill"
        self.sh(["docker", "rm", "-f", name], check=False)
        self.sh(["docker", "volume", "rm", "-f", volume], check=False)
        self.sh(["docker", "volume", "create", volume])
        started = time.monotonic()
        try:
            args = ["--type=time", f"--target={pg_time(target)}", "--target-action=promote"]
            self._restore(args, volume=volume, repo_mode=":ro", check=True)
            self.sh(
                [
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "none",
                    *self._mounts(volume, repo_mode=":ro"),
                    self.image,
                ]
            )
            scratch = Cluster(name, self.stanza, self.image, volume, self.repo, self.conf_dir, self.user, self._run)
            scratch.wait_promoted(wait, since=time.time() - 5)
            answer = scratch.psql(query or "SELECT count(*) FROM pg_database")
            if answer.strip() in ("", "0", "f", "false"):
                raise PitrError(f"the drill's check query answered {answer.strip()!r} on the restored copy")
        finally:
            self.sh(["docker", "rm", "-f", name], check=False)
            self.sh(["docker", "volume", "rm", "-f", volume], check=False)
        return {"target": pg_time(target), "seconds": round(time.monotonic() - started, 1), "answer": answer.strip()}

    def _mounts(self, volume=None, repo_mode=""):
        """The repository and pgbackrest.conf, as the database container has
        them (and VOLUME as the data directory)."""
        data = ["-v", f"{volume}:{DATA_DIR}"] if volume else []
        return data + [
            "-v",
            f"{self.conf_dir}:/etc/pgbackrest:ro",
            "-v",
            f"{self.repo}:{self.repo_path}{repo_mode}",
        ]

    def _oneoff(self, *args, volume=None, repo_mode="", check=False):
        """pgbackrest ARGS in a one-off container of the image (the database may be down)."""
        return self.sh(
            [
                "docker",
                "run",
                "--rm",
                "--user",
                "postgres",
                "--entrypoint",
                "pgbackrest",
                *self._mounts(volume, repo_mode),
                self.image,
                f"--stanza={self.stanza}",
                *args,
            ],
            check=check,
        )

    def _restore(self, args, volume=None, repo_mode="", check=False):
        return self._oneoff(
            "--log-level-console=warn", *args, "restore", volume=volume or self.volume, repo_mode=repo_mode, check=check
        )

    def info_offline(self):
        """pgbackrest info from a one-off container (the database may be down)."""
        proc = self._oneoff("--output=json", "info")
        if proc.returncode != 0:
            raise PitrError(
                f"pgbackrest info failed: {(proc.stderr or proc.stdout).strip()[-400:]}. Nothing was changed."
            )
        return parse_info(proc.stdout, self.stanza)

    def verify(self):
        """pgbackrest verify: every backup file and WAL segment of the
        repository against its checksum. pgBackRest 2.45 ends it with exit 0
        even when files are bad; its report ("status: error", "invalid
        result ...") is what tells."""
        proc = self._oneoff("--log-level-console=info", "--job-retry=0", "verify")
        report = proc.stdout + proc.stderr
        bad = [line.split("INFO:", 1)[-1].strip() for line in report.splitlines() if "invalid result" in line]
        if proc.returncode != 0 or bad or "status: error" in report:
            raise PitrError(
                "pgbackrest verify found damaged or missing files in the WAL/base backup repository: "
                f"{'; '.join(bad[:3]) or report.strip()[-600:]}. Nothing was restored."
            )

    def wait_promoted(self, wait, since=None):
        """Until the database accepts writes; PitrError at once when its log
        says recovery failed (PostgreSQL then exits and Docker restarts it
        in a loop), or after WAIT seconds."""
        deadline = time.monotonic() + wait
        last = ""
        while time.monotonic() < deadline:
            proc = self.sh(
                self._psql_argv("SELECT pg_is_in_recovery()"),
                check=False,
            )
            last = (proc.stdout or proc.stderr).strip()
            if proc.returncode == 0 and last == "f":
                return
            if since is not None:
                state = self.sh(
                    ["docker", "inspect", "-f", "{{.State.Status}} {{.RestartCount}}", self.container], check=False
                ).stdout.split()
                if state and (state[0] in ("exited", "restarting", "dead") or (len(state) > 1 and state[1] != "0")):
                    raise PitrError(f"recovery failed: {self._recovery_error(since)}")
            time.sleep(1)
        raise PitrError(f"the database did not finish recovery within {wait} s (last answer: {last[-200:]!r}).")

    def _recovery_error(self, since):
        """PostgreSQL's own words from its log since SINCE: the FATAL line and
        how far the WAL went."""
        logs = self.sh(["docker", "logs", "--since", str(int(since)), self.container], check=False)
        lines = (logs.stdout + logs.stderr).splitlines()
        fatal = [x.split("FATAL:", 1)[1].strip() for x in lines if "FATAL:" in x and "starting up" not in x]
        told = [x.split("LOG:", 1)[-1].strip() for x in lines if "last completed transaction" in x]
        text = fatal[-1] if fatal else "the database exited during recovery"
        return text + (f" ({told[-1]})." if told else ".")
