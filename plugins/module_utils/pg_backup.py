# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL backups that never pass off a bad file as a good one.

One engine for the pg_backup and pg_restore modules and the backup role's
timer: standard library only, so it can be shipped to a server as is.

A backup is ``{prefix}{dbname}-{YYYYmmddTHHMMSSZ}.{ext}`` (a file, or a
directory for the directory format) with ``<that name>.sha256`` beside it
in sha256sum format, whose first line (a ``#`` comment, which sha256sum -c
skips) records when the backup was completed. It is written under a hidden
temporary name, read back in full, fsynced, and only then renamed into
place. Retention runs only after a new backup succeeded and never removes
the newest one.

Backups are ordered by the time they recorded (the name's time for one that
recorded none). One dated more than FUTURE_TOLERANCE ahead of the clock (the
clock jumped back, or a file copied in) is never the newest: retention keeps
it without counting it, restores do not pick it, and it is reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time

CHUNK = 1024 * 1024
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
EXTENSIONS = {
    ("custom", None): "dump",
    ("directory", None): "dir",
    ("plain", "none"): "sql",
    ("plain", "gzip"): "sql.gz",
    ("plain", "zstd"): "sql.zst",
    ("plain", "lz4"): "sql.lz4",
}
EXT_RE = r"dump|dir|sql|sql\.gz|sql\.zst|sql\.lz4"
STAMP = "%Y%m%dT%H%M%SZ"
RECORDED = "%Y-%m-%dT%H:%M:%SZ"
# The manifest's first line: a comment to sha256sum -c, the completion time to us.
MANIFEST_HEADER = "# onebox-backup completed="
# How far ahead of this server's clock a backup may be dated and still count.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)


class BackupError(Exception):
    """A backup or restore that failed; the message says what to do."""


# --- compression of plain dumps -------------------------------------------------
# gzip runs in this process; zstd and lz4 run as their own commands, beside
# pg_dump (zstd with a thread per core), so any pg_dump version can use them.
EXTERNAL_SUFFIX = {".zst": "zstd", ".lz4": "lz4"}


def compression_tool(method):
    """Path of the zstd or lz4 command, or a BackupError saying how to get it."""
    path = shutil.which(method)
    if not path:
        raise BackupError(
            f"compression {method} needs the {method} command on this server (Debian: apt install {method}); "
            "or use gzip"
        )
    return path


def compressor_argv(method, level):
    argv = [compression_tool(method), "-q", "-c"]
    if method == "zstd":
        argv.append("-T0")
        if level is not None and int(level) > 19:
            argv.append("--ultra")
    if level is not None and int(level) > 0:
        argv.append(f"-{int(level)}")
    return argv


def compression_of(path):
    """gzip, zstd, lz4 or none, from a plain dump's name."""
    if path.endswith(".gz"):
        return "gzip"
    return next((t for suffix, t in EXTERNAL_SUFFIX.items() if path.endswith(suffix)), "none")


@contextlib.contextmanager
def open_plain(path, compression=None):
    """The SQL of a plain dump (.sql, .sql.gz, .sql.zst, .sql.lz4; COMPRESSION
    overrides the name) as a stream. A zstd or lz4 file is decoded by its
    command; leaving the block after reading everything checks that it
    decoded without error."""
    tool = compression or compression_of(path)
    if tool not in EXTERNAL_SUFFIX.values():
        with gzip.open(path, "rb") if tool == "gzip" else open(path, "rb") as fh:
            yield fh
        return
    proc = subprocess.Popen([compression_tool(tool), "-dc", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # pylint: disable=consider-using-with
    try:
        yield proc.stdout
        for _block in iter(lambda: proc.stdout.read(CHUNK), b""):
            pass
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        proc.wait()
    if proc.returncode != 0:
        raise BackupError(f"{path} does not decompress: {err.decode(errors='replace').strip()}")


# --- names and retention ------------------------------------------------------


def backup_pattern(prefix, dbname):
    return re.compile(r"^" + re.escape(f"{prefix}{dbname}-") + r"(?P<ts>\d{8}T\d{6}Z)\.(?P<ext>" + EXT_RE + r")$")


def format_of(ext):
    if ext == "dump":
        return "custom"
    if ext == "dir":
        return "directory"
    return "plain"


def utc_now():
    return dt.datetime.now(dt.timezone.utc)


def list_backups(directory, prefix, dbname, now=None):
    """Backups of this naming pattern in ``directory``, newest first, and
    after them those dated in the future (newest first too).

    Each: name, path, time (aware UTC: when it recorded it was completed,
    else the name's time), named (the name's time), recorded (whether its
    manifest records the time), future (time more than FUTURE_TOLERANCE
    after NOW, by default the clock), format, verified (has its .sha256).
    Files of any other name are never listed, so never touched.
    """
    pattern = backup_pattern(prefix, dbname)
    limit = (now or utc_now()) + FUTURE_TOLERANCE
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    present = set(names)
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        named = dt.datetime.strptime(m.group("ts"), STAMP).replace(tzinfo=dt.timezone.utc)
        path = os.path.join(directory, name)
        verified = f"{name}.sha256" in present
        recorded = manifest_completed(path) if verified else None
        when = recorded or named
        found.append(
            {
                "name": name,
                "path": path,
                "time": when,
                "named": named,
                "recorded": recorded is not None,
                "future": when > limit,
                "format": format_of(m.group("ext")),
                "verified": verified,
            }
        )
    found.sort(key=lambda b: (not b["future"], b["time"], b["name"]), reverse=True)
    return found


def future_warning(backups, now=None):
    """What to tell about BACKUPS (list_backups) dated in the future: "" for none."""
    future = [b for b in backups if b.get("future")]
    if not future:
        return ""
    when = ", ".join(f"{b['name']} ({b['time'].strftime(RECORDED)})" for b in future)
    return (
        f"{len(future)} backup(s) dated more than {int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes after this "
        f"server's clock ({(now or utc_now()).strftime(RECORDED)}): {when}. The clock was ahead when they were "
        "taken, or they were copied in. They are kept (never pruned) but never count as the newest backup, and "
        "restores do not pick them. Check the clock (timedatectl), then move them away or restore one by its path."
    )


def bucket_keys():
    return {
        "hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
        "daily": lambda t: t.strftime("%Y-%m-%d"),
        "weekly": lambda t: "%04d-W%02d" % t.isocalendar()[:2],
        "monthly": lambda t: t.strftime("%Y-%m"),
    }


def select_retention(backups, keep_last=0, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0, protect=()):
    """Split verified ``backups`` into (kept, pruned) names.

    keep_last keeps the N newest; keep_hourly/daily/weekly/monthly keep the
    newest backup of each of the N most recent hours/days/ISO weeks/months
    that have one. A backup kept by any rule is kept. The newest backup and
    the names in ``protect`` are always kept. With every rule at 0 nothing
    is pruned. Backups flagged ``future`` (list_backups) are kept, after the
    others, and take no part: none is the newest, none fills a rule's slot.
    The result depends only on the names, times and flags given.
    """
    future = sorted((b for b in backups if b.get("future")), key=lambda b: (b["time"], b["name"]), reverse=True)
    ordered = sorted((b for b in backups if not b.get("future")), key=lambda b: (b["time"], b["name"]), reverse=True)
    names = [b["name"] for b in ordered]
    if not ordered or not any((keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)):
        return names + [b["name"] for b in future], []
    keep = set(names[: max(keep_last, 0)])
    keep.add(names[0])
    keep.update(n for n in protect if n in names)
    counts = {"hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly}
    for period, key in bucket_keys().items():
        limit = counts[period]
        if limit <= 0:
            continue
        seen = set()
        for b in ordered:
            k = key(b["time"])
            if k in seen:
                continue
            seen.add(k)
            keep.add(b["name"])
            if len(seen) >= limit:
                break
    kept = [n for n in names if n in keep]
    pruned = [n for n in names if n not in keep]
    return kept + [b["name"] for b in future], pruned


def remove_backup(directory, name):
    path = os.path.join(directory, name)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    side = f"{path}.sha256"
    if os.path.lexists(side):
        os.unlink(side)
    globals_file = f"{path}.globals.sql"
    if os.path.lexists(globals_file):
        os.unlink(globals_file)


# --- files ------------------------------------------------------------------------


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def manifest_for(path, name):
    """sha256sum lines for a backup: one line for a file, one per file of a
    directory (paths relative to the backup directory's parent)."""
    lines = []
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for f in sorted(files):
                full = os.path.join(root, f)
                rel = os.path.relpath(full, os.path.dirname(path))
                lines.append((sha256_file(full), rel))
        lines.sort(key=lambda x: x[1])
    else:
        lines.append((sha256_file(path), name))
    return lines


def write_atomic(path, data, mode=0o600):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".onebox-", suffix=".partial", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def manifest_text(lines, completed):
    """NAME.sha256: the completion time (a comment to sha256sum -c), then
    LINES [(hash, relative name)] in sha256sum format."""
    header = f"{MANIFEST_HEADER}{completed.astimezone(dt.timezone.utc).strftime(RECORDED)}\n"
    return (header + "".join(f"{h}  {rel}\n" for h, rel in lines)).encode()


def manifest_completed(path):
    """When backup PATH recorded it was completed (aware UTC), from the first
    line of its .sha256; None when it records none or cannot be read."""
    try:
        with open(f"{path}.sha256", encoding="utf-8") as fh:
            first = fh.readline().strip()
    except (OSError, ValueError):
        return None
    if not first.startswith(MANIFEST_HEADER):
        return None
    try:
        return dt.datetime.strptime(first[len(MANIFEST_HEADER) :], RECORDED).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def read_manifest(path):
    """Parse NAME.sha256 into [(hash, relative name)] (comment lines skipped, as sha256sum -c does)."""
    entries = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([0-9a-f]{64}) [ *](.+)$", line)
            if not m:
                raise BackupError(f"{path} is not a sha256sum file (line {line[:80]!r})")
            entries.append((m.group(1), m.group(2)))
    return entries


def check_checksum(path):
    """Compare a backup with its .sha256; raise BackupError on any mismatch."""
    side = f"{path}.sha256"
    if not os.path.exists(side):
        raise BackupError(f"{path} has no checksum file {side}: it was not written (or not finished) by pg_backup")
    expected = read_manifest(side)
    base = os.path.dirname(path)
    listed = set()
    for digest, rel in expected:
        full = os.path.join(base, rel)
        listed.add(os.path.normpath(full))
        if not os.path.exists(full):
            raise BackupError(f"checksum check failed: {full} is missing")
        actual = sha256_file(full)
        if actual != digest:
            raise BackupError(
                f"checksum mismatch for {full}: expected {digest[:16]}..., found {actual[:16]}... "
                "The backup is damaged; it was not restored. Pick another backup."
            )
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for f in files:
                if os.path.normpath(os.path.join(root, f)) not in listed:
                    raise BackupError(f"checksum check failed: {os.path.join(root, f)} is not in {side}")
    return manifest_digest(path)


class Lock:
    """An exclusive flock on DIR/.onebox-backup.lock, so runs never overlap."""

    def __init__(self, directory, timeout=60.0, poll=0.2):
        self.path = os.path.join(directory, ".onebox-backup.lock")
        self.timeout = float(timeout)
        self.poll = poll
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
                    except OSError:
                        holder = "?"
                    os.close(self.fd)
                    self.fd = None
                    raise BackupError(
                        f"another backup or restore holds {self.path} ({holder or 'unknown holder'}); "
                        f"waited {self.timeout:g} s. Try again when it has finished, or raise lock_timeout."
                    ) from None
                time.sleep(self.poll)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} since {dt.datetime.now(dt.timezone.utc).strftime(STAMP)}".encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --- running PostgreSQL tools ----------------------------------------------


class PgRunner:
    """Runs pg_dump, pg_restore and psql on this host or in a container.

    The password goes to the child in PGPASSWORD (with `docker exec -e
    PGPASSWORD`, which copies the value from our environment): never argv.
    """

    def __init__(
        self,
        host=None,
        port=None,
        user=None,
        password=None,
        container=None,
        docker="docker",
        bin_dir=None,
        container_user=None,
    ):
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.container = container
        self.docker = docker
        self.bin_dir = bin_dir
        self.container_user = container_user

    def _env(self):
        env = dict(os.environ)
        for k in ("PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSFILE", "PGSERVICE"):
            env.pop(k, None)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if not self.container:
            if self.host:
                env["PGHOST"] = self.host
            if self.port:
                env["PGPORT"] = str(self.port)
            if self.user:
                env["PGUSER"] = self.user
        return env

    def argv(self, tool, args, stdin=False):
        if self.container:
            cmd = [self.docker, "exec"]
            if stdin:
                cmd.append("-i")
            if self.container_user:
                cmd += ["--user", self.container_user]
            if self.password is not None:
                cmd += ["-e", "PGPASSWORD"]
            if self.host:
                cmd += ["-e", f"PGHOST={self.host}"]
            if self.port:
                cmd += ["-e", f"PGPORT={self.port}"]
            if self.user:
                cmd += ["-e", f"PGUSER={self.user}"]
            return [*cmd, self.container, tool, *args]
        exe = os.path.join(self.bin_dir, tool) if self.bin_dir else tool
        return [exe, *args]

    def popen(self, tool, args, stdin=None, stdout=None):
        argv = self.argv(tool, args, stdin=stdin is not None)
        try:
            return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=self._env())
        except FileNotFoundError:
            where = f"in container {self.container}" if self.container else "on this host"
            raise BackupError(f"{argv[0]} not found {where}: install the PostgreSQL client tools") from None

    def run(self, tool, args, stdin_path=None, input_bytes=None):
        """Run to completion; return stdout bytes, raise BackupError with
        the tool's own words on failure."""
        stdin = open(stdin_path, "rb") if stdin_path else (subprocess.PIPE if input_bytes is not None else None)  # noqa: SIM115
        try:
            proc = self.popen(tool, args, stdin=stdin, stdout=subprocess.PIPE)
            out, err = proc.communicate(input=input_bytes)
        finally:
            if stdin_path:
                stdin.close()
        if proc.returncode != 0:
            raise BackupError(self.explain(tool, proc.returncode, err))
        return out

    def explain(self, tool, code, stderr):
        text = (stderr or b"").decode("utf-8", "replace").strip()
        hint = ""
        if "password authentication failed" in text or "no password supplied" in text:
            hint = " Check the password (pg_backup sends it in PGPASSWORD, never on the command line)."
        elif "server version mismatch" in text:
            hint = " Run the dump inside the database container (container: NAME) so the versions match."
        elif "No such container" in text or "is not running" in text:
            hint = " Is the database container running?"
        elif "does not exist" in text and "database" in text:
            hint = " Check dbname."
        where = f" in container {self.container}" if self.container else ""
        return f"{tool}{where} failed (exit {code}): {text[-1500:] or 'no message'}.{hint}"

    def psql_value(self, sql, dbname="postgres"):
        out = self.run("psql", ["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql])
        return out.decode().strip()

    def server_version(self, dbname):
        return self.psql_value("SHOW server_version_num", dbname)

    def tool_version(self, tool):
        out = self.run(tool, ["--version"]).decode()
        m = re.search(r"(\d+)(?:\.(\d+))?", out)
        return int(m.group(1)) if m else 0


# The role libpq connects as when none is given: the official postgres
# image has no USER, so `docker exec` runs as root and libpq would ask for
# role "root", which does not exist there.
DEFAULT_USER = "postgres"

# Connection options shared by the pg_backup and pg_restore modules
# (documented in the onebox.platform.postgres doc fragment).
CONNECTION_ARGS = dict(
    host=dict(type="str"),
    port=dict(type="int"),
    user=dict(type="str", default=DEFAULT_USER),
    password=dict(type="str", no_log=True),
    container=dict(type="str"),
    container_user=dict(type="str"),
    docker_bin=dict(type="str", default="docker"),
    bin_dir=dict(type="path"),
)

RETENTION_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")

# Every option of a backup run, with its one default: the pg_backup module's
# argument spec, and the keys (and defaults) of the backup role's job file
# that onebox-pg-backup reads. Changed here, it changes for both.
BACKUP_ARGS = dict(
    **CONNECTION_ARGS,
    backup_dir=dict(type="path", required=True),
    dbname=dict(type="str", required=True),
    format=dict(type="str", default="custom", choices=["custom", "directory", "plain"]),
    compression=dict(type="str", default="gzip", choices=["gzip", "zstd", "lz4", "none"]),
    compression_level=dict(type="int"),
    jobs=dict(type="int", default=1),
    globals=dict(type="bool", default=False),
    extra_args=dict(type="list", elements="str", default=[]),
    name_prefix=dict(type="str", default=""),
    **{key: dict(type="int", default=0) for key in RETENTION_KEYS},
    # A deploy's backup that meets a scheduled one waits for it to finish.
    lock_timeout=dict(type="float", default=600.0),
)


def params_with_defaults(given, spec=None):
    """The options of ``spec`` (BACKUP_ARGS) from a dict such as a job file:
    each given value that is not None, else the spec's default. Raises
    BackupError naming a missing required option or a value not among its
    choices, as the module's argument spec would."""
    spec = BACKUP_ARGS if spec is None else spec
    params = {}
    for key, opt in spec.items():
        value = given.get(key)
        if value is None:
            if opt.get("required"):
                raise BackupError(f"option {key} is required")
            value = opt.get("default")
        if value is not None and "choices" in opt and value not in opt["choices"]:
            raise BackupError(f"{key} must be one of {', '.join(opt['choices'])}, not {value!r}")
        params[key] = value
    return params


def runner_from_params(params):
    return PgRunner(
        host=params["host"],
        port=params["port"],
        user=params["user"] or DEFAULT_USER,
        password=params["password"],
        container=params["container"],
        docker=params["docker_bin"],
        bin_dir=params["bin_dir"],
        container_user=params["container_user"],
    )


def backup_from_params(params):
    """The Backup a set of BACKUP_ARGS options describes (module and program alike)."""
    for key in (*RETENTION_KEYS, "jobs"):
        if params[key] < 0:
            raise BackupError(f"{key} must not be negative, got {params[key]}")
    return Backup(
        runner_from_params(params),
        params["backup_dir"],
        params["dbname"],
        fmt=params["format"],
        compression=params["compression"],
        compression_level=params["compression_level"],
        jobs=params["jobs"],
        prefix=params["name_prefix"],
        globals_too=params["globals"],
        extra_args=params["extra_args"],
        lock_timeout=params["lock_timeout"],
        retention={k: int(params[k]) for k in RETENTION_KEYS},
    )


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text):
    return "'" + text.replace("'", "''") + "'"


# --- backup -----------------------------------------------------------------------


class Backup:
    def __init__(
        self,
        runner,
        backup_dir,
        dbname,
        fmt="custom",
        compression="gzip",
        compression_level=None,
        jobs=1,
        prefix="",
        globals_too=False,
        extra_args=(),
        lock_timeout=BACKUP_ARGS["lock_timeout"]["default"],
        retention=None,
        now=None,
    ):
        self.runner = runner
        self.dir = backup_dir
        self.dbname = dbname
        self.fmt = fmt
        self.compression = compression
        self.level = compression_level
        self.jobs = max(int(jobs or 1), 1)
        self.prefix = prefix
        self.globals_too = globals_too
        self.extra_args = list(extra_args or [])
        self.lock_timeout = lock_timeout
        self.retention = dict(retention or {})
        self.now = now or (lambda: dt.datetime.now(dt.timezone.utc))

    # names
    def extension(self):
        key = (self.fmt, None) if self.fmt in ("custom", "directory") else (self.fmt, self.compression)
        if key not in EXTENSIONS:
            raise BackupError(f"format {self.fmt} with compression {self.compression} is not supported")
        return EXTENSIONS[key]

    def name_at(self, when):
        return f"{self.prefix}{self.dbname}-{when.strftime(STAMP)}.{self.extension()}"

    def validate(self):
        if self.fmt not in ("custom", "directory", "plain"):
            raise BackupError(f"format must be custom, directory or plain, not {self.fmt}")
        if self.compression not in ("gzip", "zstd", "lz4", "none"):
            raise BackupError(f"compression must be gzip, zstd, lz4 or none, not {self.compression}")
        if self.jobs > 1 and self.fmt != "directory":
            raise BackupError("jobs > 1 needs format: directory (pg_dump dumps in parallel only to a directory)")
        if self.level is not None and not 0 <= int(self.level) <= 22:
            raise BackupError(f"compression_level must be 0..22, got {self.level}")
        if self.fmt == "plain" and self.compression in ("zstd", "lz4"):
            compression_tool(self.compression)
        if not os.path.isdir(self.dir):
            raise BackupError(f"backup_dir {self.dir} does not exist or is not a directory")
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise BackupError(f"backup_dir {self.dir} is not writable by this user")
        self.extension()

    def compress_args(self, server_major):
        """pg_dump compression flags for custom/directory (and plain zstd/lz4)."""
        if self.fmt == "plain":
            # Compressed here (gzip) or by the zstd/lz4 command, never by pg_dump.
            return ["-Z", "0"] if server_major >= 16 else []
        method = self.compression
        if method == "none":
            return ["-Z", "0"]
        if server_major < 16:
            if method != "gzip":
                raise BackupError(
                    f"compression {method} needs pg_dump 16 or newer; this pg_dump is {server_major}. Use gzip."
                )
            return ["-Z", str(self.level if self.level is not None else 6)]
        spec = method if self.level is None else f"{method}:{self.level}"
        return [f"--compress={spec}"]

    def dump_args(self, tool_major, target=None):
        fmt_flag = {"custom": "-Fc", "directory": "-Fd", "plain": "-Fp"}[self.fmt]
        args = ["-w", fmt_flag, *self.compress_args(tool_major)]
        if self.fmt == "directory":
            args += ["-j", str(self.jobs), "-f", target]
        if self.fmt == "plain":
            # A plain dump restores over an existing database.
            args += ["--clean", "--if-exists"]
        return [*args, *self.extra_args, "-d", self.dbname]

    def plan(self):
        """What a run would do now (for check mode): name and pruning."""
        self.validate()
        now = self.now()
        name = self.name_at(now)
        existing = [b for b in list_backups(self.dir, self.prefix, self.dbname, now) if b["verified"]]
        fake = {"name": name, "time": now.replace(microsecond=0), "verified": True}
        kept, pruned = select_retention([fake, *existing], protect=(name,), **self.retention)
        return {
            "path": os.path.join(self.dir, name),
            "kept": kept,
            "pruned": pruned,
            "before": [b["name"] for b in existing],
            "future": [b["name"] for b in existing if b["future"]],
            "warning": future_warning(existing, now),
        }

    def run(self):
        self.validate()
        t0 = time.monotonic()
        with Lock(self.dir, self.lock_timeout):
            removed = self._remove_leftovers()
            tool_major = self.runner.tool_version("pg_dump")
            when = self.now().replace(microsecond=0)
            name = self.name_at(when)
            while os.path.lexists(os.path.join(self.dir, name)):
                time.sleep(0.2)
                when = self.now().replace(microsecond=0)
                name = self.name_at(when)
            final = os.path.join(self.dir, name)
            partial = os.path.join(self.dir, f".{name}.partial")
            try:
                self._dump(partial, tool_major)
                self._verify(partial)
                lines = manifest_for(partial, name)
                # The manifest names the final path.
                lines = [(h, rel.replace(f".{name}.partial", name, 1)) for h, rel in lines]
                if self.globals_too:
                    self._dump_globals(f"{final}.globals.sql")
                    lines.append((sha256_file(f"{final}.globals.sql"), f"{name}.globals.sql"))
                completed = self.now().replace(microsecond=0)
                manifest = manifest_text(lines, completed)
                os.replace(partial, final)
                write_atomic(f"{final}.sha256", manifest)
                fsync_dir(self.dir)
            except OSError as exc:
                self._discard(partial, final)
                if exc.errno == errno.ENOSPC:
                    raise BackupError(
                        f"no space left on the device of {self.dir} while writing {name}; the partial file was "
                        "removed and no older backup was pruned. Free space or lower the retention."
                    ) from None
                raise BackupError(f"writing {name} failed: {exc}; nothing was pruned") from None
            except BaseException:
                self._discard(partial, final)
                raise
            size = self._size(final)
            dump_seconds = round(time.monotonic() - t0, 3)
            now = self.now()
            existing = [b for b in list_backups(self.dir, self.prefix, self.dbname, now) if b["verified"]]
            kept, pruned = select_retention(existing, protect=(name,), **self.retention)
            for old in pruned:
                remove_backup(self.dir, old)
            if pruned:
                fsync_dir(self.dir)
        digest = manifest_digest(final)
        return {
            "path": final,
            "name": name,
            "format": self.fmt,
            "size": size,
            "bytes": size,
            "sha256": digest,
            "duration": round(time.monotonic() - t0, 3),
            "dump_duration": dump_seconds,
            "kept": kept,
            "pruned": pruned,
            "removed_partials": removed,
            "time": when.strftime(STAMP),
            "completed": completed.strftime(RECORDED),
            "future": [b["name"] for b in existing if b["future"]],
            "warning": future_warning(existing, now),
        }

    def _remove_leftovers(self):
        """Partial files of runs that were killed (we hold the lock, so no
        run is writing them now)."""
        removed = []
        pattern = re.compile(
            r"^\." + re.escape(f"{self.prefix}{self.dbname}-") + r"\d{8}T\d{6}Z\.(" + EXT_RE + r")\.partial$"
        )
        for entry in os.listdir(self.dir):
            if pattern.match(entry):
                path = os.path.join(self.dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
                removed.append(entry)
        return removed

    def _discard(self, partial, final):
        for path in (partial, f"{final}.globals.sql"):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        # A final name is only ever renamed into place with its checksum; if
        # the checksum did not get written, the file is not a backup.
        if os.path.lexists(final) and not os.path.exists(f"{final}.sha256"):
            remove_backup(self.dir, os.path.basename(final))

    def _size(self, path):
        if os.path.isdir(path):
            return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)
        return os.path.getsize(path)

    def _dump(self, partial, tool_major):
        if self.fmt == "directory":
            self._dump_directory(partial, tool_major)
            return
        args = self.dump_args(tool_major)
        external = self.fmt == "plain" and self.compression in ("zstd", "lz4")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            proc = self.runner.popen("pg_dump", args, stdout=subprocess.PIPE)
            packer = None
            if external:
                packer = subprocess.Popen(  # pylint: disable=consider-using-with
                    compressor_argv(self.compression, self.level),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.PIPE,
                )
                sink = packer.stdin
            elif self.fmt == "plain" and self.compression == "gzip":
                sink = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=int(self.level or 6), mtime=0)
            else:
                sink = out
            try:
                # Read pg_dump's stdout ourselves: its exit code is the one
                # we judge (no shell pipe hides it behind the compressor's),
                # and the compressor's is judged on its own.
                for block in iter(lambda: proc.stdout.read(CHUNK), b""):
                    sink.write(block)
                if sink is not out:
                    sink.close()
                if packer:
                    packer.wait()
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                for p in (proc, packer):
                    if p:
                        p.kill()
                        p.wait()
                raise
            finally:
                proc.stdout.close()
            err = proc.stderr.read()
            proc.wait()
        if proc.returncode != 0:
            raise BackupError(
                self.runner.explain("pg_dump", proc.returncode, err) + " No backup was written; nothing was pruned."
            )
        if packer and packer.returncode != 0:
            raise BackupError(
                f"{self.compression} failed (exit {packer.returncode}): "
                f"{packer.stderr.read().decode(errors='replace').strip()}. No backup was written; nothing was pruned."
            )

    def _dump_directory(self, partial, tool_major):
        if not self.runner.container:
            self.runner.run("pg_dump", self.dump_args(tool_major, target=partial))
        else:
            inside = f"/tmp/onebox-dump-{os.getpid()}-{int(time.time())}"
            try:
                self.runner.run("pg_dump", self.dump_args(tool_major, target=inside))
                # Read it back in full inside the container, where pg_restore
                # matches pg_dump, before copying it out.
                self.runner.run("pg_restore", ["-f", "/dev/null", inside])
                proc = subprocess.run(
                    [self.runner.docker, "cp", f"{self.runner.container}:{inside}", partial],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise BackupError(f"docker cp of the dump failed: {proc.stderr.strip()}")
            finally:
                subprocess.run(
                    [self.runner.docker, "exec", self.runner.container, "rm", "-rf", inside],
                    capture_output=True,
                    check=False,
                )
        os.chmod(partial, 0o700)
        for root, dirs, files in os.walk(partial):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
            for f in files:
                os.chmod(os.path.join(root, f), 0o600)
                with open(os.path.join(root, f), "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(partial)

    def _dump_globals(self, path):
        data = self.runner.run("pg_dumpall", ["-w", "--globals-only"])
        write_atomic(path, data)

    def _verify(self, partial):
        verify_archive(self.runner, partial, self.fmt, self.compression)


def verify_archive(runner, path, fmt, compression=None):
    """Read the whole archive, not just its table of contents.

    `pg_restore --list` reads only the TOC, written first: a file cut in its
    data section still lists. `pg_restore -f /dev/null` decodes every data
    block; a gzip stream is decompressed to its CRC.
    """
    if fmt == "custom":
        if runner.container:
            runner.run("pg_restore", ["--list"], stdin_path=path)
            runner.run("pg_restore", ["-f", "/dev/null"], stdin_path=path)
        else:
            runner.run("pg_restore", ["--list", path])
            runner.run("pg_restore", ["-f", "/dev/null", path])
    elif fmt == "directory":
        if not runner.container:
            runner.run("pg_restore", ["-f", "/dev/null", path])
        elif not os.path.isfile(os.path.join(path, "toc.dat")):
            raise BackupError(f"{path} has no toc.dat: not a directory-format dump")
    else:
        tail = b""
        try:
            with open_plain(path, compression) as fh:
                for block in iter(lambda: fh.read(CHUNK), b""):
                    tail = (tail + block)[-4096:]
        except (OSError, EOFError) as exc:
            raise BackupError(f"{path} is damaged: {exc}") from None
        if PLAIN_TRAILER not in tail:
            raise BackupError(f"{path} is incomplete: it lacks pg_dump's closing line")


def manifest_digest(path):
    entries = read_manifest(f"{path}.sha256")
    if len(entries) == 1:
        return entries[0][0]
    with open(f"{path}.sha256", "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# --- restore ----------------------------------------------------------------------


def latest_backup(directory, prefix, dbname, warn=None, now=None):
    """The path of the newest verified backup, never one dated in the future
    (those are told to WARN, a callable, when there are any)."""
    backups = [b for b in list_backups(directory, prefix, dbname, now) if b["verified"]]
    skew = future_warning(backups, now)
    if warn and skew:
        warn(skew)
    for b in backups:
        if not b["future"]:
            return b["path"]
    if backups:
        raise BackupError(f"no verified backup of {dbname} in {directory} that is not dated in the future. {skew}")
    raise BackupError(f"no verified backup of {dbname} in {directory} (names {prefix}{dbname}-YYYYmmddTHHMMSSZ.*)")


class Restore:
    def __init__(
        self,
        runner,
        path,
        target_db,
        create=False,
        confirm_overwrite=False,
        clean=True,
        single_transaction=True,
        jobs=1,
        no_owner=False,
        lock_dir=None,
        lock_timeout=60.0,
    ):
        self.runner = runner
        self.path = path
        self.target = target_db
        self.create = create
        self.confirm = confirm_overwrite
        self.clean = clean
        self.single = single_transaction
        self.jobs = max(int(jobs or 1), 1)
        self.no_owner = no_owner
        self.lock_dir = lock_dir
        self.lock_timeout = lock_timeout

    def fmt(self):
        name = os.path.basename(self.path.rstrip("/"))
        m = re.search(r"\.(" + EXT_RE + r")$", name)
        if not m:
            raise BackupError(f"{self.path} is not a pg_backup file (.dump, .dir, .sql, .sql.gz)")
        return format_of(m.group(1)), m.group(1)

    def inspect_target(self):
        exists = (
            self.runner.psql_value(f"SELECT count(*) FROM pg_database WHERE datname = {quote_literal(self.target)}")
            == "1"
        )
        if not exists:
            return {"exists": False, "tables": 0, "connections": 0}
        # Connections first: the session that counts the tables connects to the
        # target, and its server process may still show in pg_stat_activity for
        # a moment after it ended (a busy server: "live, 1 other connection").
        conns = int(
            self.runner.psql_value(
                f"SELECT count(*) FROM pg_stat_activity WHERE datname = {quote_literal(self.target)} "
                "AND pid <> pg_backend_pid()"
            )
        )
        tables = int(
            self.runner.psql_value(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname NOT IN ('pg_catalog','information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%'",
                self.target,
            )
        )
        return {"exists": True, "tables": tables, "connections": conns}

    def check(self):
        """Checks that run before anything is touched; returns facts."""
        if not os.path.exists(self.path):
            raise BackupError(f"backup {self.path} does not exist")
        fmt, _ext = self.fmt()
        sha = check_checksum(self.path)
        if self.jobs > 1 and fmt != "directory" and not (fmt == "custom" and not self.runner.container):
            raise BackupError("jobs > 1 needs a directory-format backup (or a custom one restored on this host)")
        target = self.inspect_target()
        if not target["exists"] and not self.create:
            raise BackupError(f"database {self.target} does not exist; set create: true to create it")
        live = target["exists"] and (target["tables"] > 0 or target["connections"] > 0)
        if live and not self.confirm:
            raise BackupError(
                f"database {self.target} is live ({target['tables']} tables, {target['connections']} other "
                "connections): restoring would overwrite it. Restore into a scratch database (target_db), or set "
                "confirm_overwrite: true after stopping or draining the app. Nothing was changed."
            )
        return {"format": fmt, "sha256": sha, "target": target, "live": live}

    def run(self):
        t0 = time.monotonic()
        lock_dir = self.lock_dir or os.path.dirname(os.path.abspath(self.path))
        # Backups on a read-only mount can still be restored, without a lock.
        lock = Lock(lock_dir, self.lock_timeout) if os.access(lock_dir, os.W_OK) else contextlib.nullcontext()
        with lock:
            facts = self.check()
            if not facts["target"]["exists"]:
                self.runner.psql_value(f"CREATE DATABASE {quote_ident(self.target)}")
            fmt = facts["format"]
            if fmt in ("custom", "directory"):
                self._pg_restore(fmt, facts["target"]["exists"])
            else:
                self._psql_restore()
            tables = int(
                self.runner.psql_value(
                    "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog','information_schema')",
                    self.target,
                )
            )
        return dict(
            facts,
            path=self.path,
            target_db=self.target,
            duration=round(time.monotonic() - t0, 3),
            tables=tables,
            created=not facts["target"]["exists"],
        )

    def _restore_flags(self, existed):
        args = ["-w", "--exit-on-error", "-d", self.target]
        if self.clean and existed:
            args += ["--clean", "--if-exists"]
        if self.no_owner:
            args += ["--no-owner", "--no-privileges"]
        if self.jobs > 1:
            args += ["-j", str(self.jobs)]
        elif self.single:
            args.append("--single-transaction")
        return args

    def _pg_restore(self, fmt, existed):
        args = self._restore_flags(existed)
        if not self.runner.container:
            self.runner.run("pg_restore", [*args, self.path])
        elif fmt == "custom" and self.jobs == 1:
            self.runner.run("pg_restore", args, stdin_path=self.path)
        else:
            inside = f"/tmp/onebox-restore-{os.getpid()}-{int(time.time())}"
            cp = subprocess.run(
                [self.runner.docker, "cp", self.path, f"{self.runner.container}:{inside}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if cp.returncode != 0:
                raise BackupError(f"docker cp into {self.runner.container} failed: {cp.stderr.strip()}")
            try:
                subprocess.run(
                    [self.runner.docker, "exec", "-u", "root", self.runner.container, "chmod", "-R", "a+rX", inside],
                    capture_output=True,
                    check=False,
                )
                self.runner.run("pg_restore", [*args, inside])
            finally:
                subprocess.run(
                    [self.runner.docker, "exec", "-u", "root", self.runner.container, "rm", "-rf", inside],
                    capture_output=True,
                    check=False,
                )

    def _psql_restore(self):
        args = ["-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.target]
        if self.single:
            args.append("--single-transaction")
        proc = self.runner.popen("psql", args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            with open_plain(self.path) as fh:
                for block in iter(lambda: fh.read(CHUNK), b""):
                    proc.stdin.write(block)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read()
        proc.wait()
        if proc.returncode != 0:
            raise BackupError(
                self.runner.explain("psql", proc.returncode, err) + " The restore stopped at the first error."
            )
