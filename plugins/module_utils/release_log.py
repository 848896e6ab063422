# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one owner of an app's release history (releases.jsonl: one JSON
object per line, oldest first), its audit log (one line per event:
``<UTC time> <action> <detail> by=<who>``) and its maintenance-colour file.
The release_record and app_state modules and the on-server ``onebox``
program all write and read them through here. Standard library only.

A write cut short (a crash, a full disk) can leave the history's last line
torn: no newline, and not JSON. Readers leave it out and report it (WARN);
the next append_release keeps it aside in ``<history>.torn-<UTC time>``,
rewrites the history without it (atomically) and then appends. A bad line
that is not the last one is damage, not a torn write: an error."""

from __future__ import annotations

import collections
import datetime as dt
import fcntl
import json
import os
import re
import unicodedata


class ReleaseLogError(Exception):
    pass


STAMP = "%Y-%m-%dT%H:%M:%SZ"
TORN_SUFFIX = ".torn-"
# Newlines, other control characters, format characters (bidi overrides,
# zero-width ones), line and paragraph separators and lone surrogates (what
# os.environ makes of bytes that are not UTF-8): never in an audit line.
_REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
_STAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

AuditEntry = collections.namedtuple("AuditEntry", "time action detail actor")


def utc_stamp(now=None):
    return (now or dt.datetime.now(dt.timezone.utc)).strftime(STAMP)


def _preview(raw):
    return raw.decode("utf-8", errors="replace").strip()[:120]


def _is_json(raw):
    try:
        json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError
        return False
    return True


def _torn_tail(data):
    """The last line of DATA when it is torn (no newline, not JSON), else b""."""
    tail = data[data.rfind(b"\n") + 1 :]
    return tail if tail.strip() and not _is_json(tail) else b""


def torn_warning(path, torn):
    return (
        f"{path} ends with a torn line (a write cut short: {len(torn)} bytes, no newline, not JSON): "
        f"{_preview(torn)!r}. It is left out of the history; the next release recorded keeps it aside in "
        f"{path}{TORN_SUFFIX}<time> and repairs the file."
    )


def read_releases(path, warn=None):
    """Every release of the history, oldest first ([] when there is none).
    A torn last line is left out and reported to WARN (a callable taking the
    message; module.warn, or a print to stderr); any other line that is not
    JSON raises ReleaseLogError naming it."""
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        data = fh.read()
    torn = _torn_tail(data)
    if torn:
        data = data[: len(data) - len(torn)]
        if warn:
            warn(torn_warning(path, torn))
    releases = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            releases.append(json.loads(raw.decode("utf-8")))
        except ValueError:
            raise ReleaseLogError(
                f"{path} line {number} is not JSON: {_preview(raw)!r}. Fix or remove that line; nothing was changed."
            ) from None
    return releases


def _open_locked(path, mode=0o640):
    """An fd of PATH (created when missing), opened for appending and held
    under an exclusive flock; the file at PATH itself, not one a repair has
    renamed away meanwhile."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)


def _read_fd(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path, data, like):
    """Write DATA to PATH atomically (a temporary file beside it, fsync,
    rename, fsync of the directory), with the mode and owner of LIKE (an
    os.stat_result)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, like.st_mode & 0o777)
    try:
        try:
            os.fchown(fd, like.st_uid, like.st_gid)
        except PermissionError:
            pass
        os.fchmod(fd, like.st_mode & 0o777)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(directory)


def _keep_aside(path, torn, like, now=None):
    """Write TORN beside the history as <history>.torn-<UTC time>[-N]; its path."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    aside, n = f"{path}{TORN_SUFFIX}{stamp}", 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}{TORN_SUFFIX}{stamp}-{n}"
    _write_new(aside, torn, like)
    return aside


def append_release(path, release, warn=None):
    """Add RELEASE (a dict) at the end of the history; a missing ``time`` is now.
    A torn last line is first kept aside (<history>.torn-<time>) and the
    history rewritten without it, atomically; WARN (a callable) is told."""
    release = dict(release)
    release.setdefault("time", utc_stamp())
    line = json.dumps(release, sort_keys=True).encode("utf-8") + b"\n"
    # Bounded: each round but the last repairs one torn line.
    for _attempt in range(5):
        fd = _open_locked(path)
        try:
            data = _read_fd(fd)
            torn = _torn_tail(data)
            if torn:
                like = os.fstat(fd)
                aside = _keep_aside(path, torn, like)
                _write_new(path, data[: len(data) - len(torn)], like)
                if warn:
                    warn(
                        f"{path} ended with a torn line (a write cut short: {len(torn)} bytes, not JSON): "
                        f"kept aside in {aside} and removed from the history, which was rewritten without it; "
                        "the new release is appended after the last whole one."
                    )
                continue
            # A last line that is whole JSON but lacks its newline gets it first.
            os.write(fd, (b"\n" if data and not data.endswith(b"\n") else b"") + line)
            os.fsync(fd)
            return release
        finally:
            os.close(fd)
    raise ReleaseLogError(f"{path} kept ending with a torn line while being repaired; nothing was appended.")


def _refused(text):
    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES})


def _escape_controls(text):
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _REFUSED_CATEGORIES else c
        for c in text
    )


def check_actor(actor):
    """ACTOR as the audit log writes it (outer spaces stripped, "unknown" for
    none); ReleaseLogError when it holds a newline or other control character
    (it would forge or break audit lines) or " by=" (it would hide who)."""
    actor = str(actor or "").strip(" ")
    bad = _refused(actor)
    if bad:
        raise ReleaseLogError(
            f"the audit log's user field {actor!r} holds a newline or other control character ({', '.join(bad)}), "
            "which would forge or break audit lines. Give a plain name (ONEBOX_WHO or USER on the controller, "
            "SUDO_USER on the server, or the actor option)."
        )
    if " by=" in actor:
        raise ReleaseLogError(
            f"the audit log's user field {actor!r} holds ' by=', which would hide who did it. Give a plain name."
        )
    return actor or "unknown"


def audit_line(action, detail="", actor="", now=None):
    """``<UTC time> <action> <detail> by=<actor>``: DETAIL with its whitespace
    folded to single spaces and any other control character escaped
    (``\\x1b``); ReleaseLogError for an ACTION that is not one word or an
    ACTOR check_actor refuses. parse_audit_line reads it back."""
    action = str(action or "")
    if not action or action != "".join(action.split()) or _refused(action):
        raise ReleaseLogError(f"the audit action {action!r} must be one word, without spaces or control characters.")
    actor = check_actor(actor)
    parts = [utc_stamp(now), action]
    detail = _escape_controls(" ".join(str(detail).split()))
    if detail:
        parts.append(detail)
    parts.append(f"by={actor}")
    return " ".join(parts)


def parse_audit_line(line):
    """The AuditEntry (time: aware UTC datetime, action, detail, actor) of an
    audit line as audit_line writes it (a trailing newline is allowed), or
    None for a line it cannot read: no time, action or ``by=``, or a control
    character anywhere (a torn or forged line). The actor is what follows the
    last " by=", which audit_line never lets an actor hold."""
    if not isinstance(line, str):
        return None
    if line.endswith("\n"):
        line = line[:-1]
    if not line or _refused(line):
        return None
    stamp, _sep, rest = line.partition(" ")
    if not _STAMP_RE.fullmatch(stamp):
        return None
    try:
        when = dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    action, sep, rest = rest.partition(" ")
    if not action or not sep:
        return None
    cut = rest.rfind(" by=")
    if cut >= 0:
        detail, actor = rest[:cut], rest[cut + 4 :]
    elif rest.startswith("by="):
        detail, actor = "", rest[3:]
    else:
        return None
    if not actor or actor != actor.strip(" ") or detail != detail.strip():
        return None
    return AuditEntry(when, action, detail, actor)


def append_audit(path, action, detail="", actor=""):
    """Append one audit line (audit_line: refused before anything is written).
    After a torn last line (no newline) the new line starts on a line of its
    own; the torn text stays, and parse_audit_line returns None for it."""
    line = audit_line(action, detail, actor)
    fd = _open_locked(path)
    try:
        size = os.fstat(fd).st_size
        cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (b"\n" if cut else b"") + line.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def read_audit(path, last=None):
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    return lines[-last:] if last else lines


def read_maintenance(path, colours):
    """The colour maintenance=off will bring back, or "" when not in maintenance.
    COLOURS: the colours it may name (None: any)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as fh:
        colour = fh.read().strip()
    if colour and colours is not None and colour not in colours:
        raise ReleaseLogError(f"{path} names colour {colour!r}, not one of {', '.join(colours)}. Fix or remove it.")
    return colour


def write_maintenance(path, colour):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(colour + "\n")
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def clear_maintenance(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
