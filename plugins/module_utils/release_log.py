# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one owner of an app's release history (releases.jsonl: one JSON
object per line, oldest first), its audit log (one line per event:
``<UTC time> <action> <detail> by=<who>``) and its maintenance-colour file.
The release_record and app_state modules and the on-server ``onebox``
program all write and read them through here. Standard library only."""

from __future__ import annotations

import datetime as dt
import json
import os


class ReleaseLogError(Exception):
    pass


def utc_stamp(now=None):
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_releases(path):
    """Every release of the history, oldest first ([] when there is none)."""
    if not path or not os.path.exists(path):
        return []
    releases = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                releases.append(json.loads(line))
            except ValueError:
                raise ReleaseLogError(
                    f"{path} line {number} is not JSON: {line.strip()[:120]!r}. "
                    "Fix or remove that line; nothing was changed."
                ) from None
    return releases


def _append(path, line, mode=0o640):
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def append_release(path, release):
    """Add RELEASE (a dict) at the end of the history; a missing ``time`` is now."""
    release = dict(release)
    release.setdefault("time", utc_stamp())
    _append(path, json.dumps(release, sort_keys=True))
    return release


def audit_line(action, detail="", actor="", now=None):
    parts = [utc_stamp(now), action]
    if detail:
        parts.append(" ".join(str(detail).split()))
    parts.append(f"by={actor or 'unknown'}")
    return " ".join(parts)


def append_audit(path, action, detail="", actor=""):
    line = audit_line(action, detail, actor)
    _append(path, line)
    return line


def read_audit(path, last=None):
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
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
