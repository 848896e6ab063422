# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decisions over an app's release history (releases.jsonl, oldest first).
Standard library only."""

from __future__ import annotations

import calendar
import time


def rolled_back_versions(releases):
    """Versions a rollback has left and that no deploy has brought back since."""
    left = set()
    for release in releases:
        if release.get("action") == "rollback" and release.get("previous_version"):
            left.add(release["previous_version"])
        elif release.get("action") == "deploy":
            left.discard(release.get("version"))
    return left


def rollback_target(releases, current):
    """The version a rollback without a named target goes back to: the newest
    version that went live before, other than ``current``, skipping any
    version a rollback has left (rolling back twice must not roll forward to
    the release that was rolled back). "" when there is none."""
    skip = rolled_back_versions(releases) | {current}
    for release in reversed(releases):
        version = release.get("version")
        if version and version not in skip:
            return version
    return ""


def keep_versions(versions, keep, running=()):
    """The versions whose images a prune keeps: the ``keep`` newest distinct
    versions of the history (VERSIONS, oldest first; a rollback may need
    them) and every version in RUNNING (what the colours run, the one being
    deployed). Sorted, for a stable result."""
    newest = []
    for version in reversed(list(versions)):
        if version and version not in newest:
            newest.append(version)
    return sorted(set(newest[: max(int(keep), 0)]) | {v for v in running if v})


class ReleaseError(ValueError):
    """A release that cannot be made; the message says why and that nothing changed."""


def choose(action, wanted, history, current, standby):
    """What a release does: deploy WANTED, or roll back (release the previous
    good version, or WANTED when named). CURRENT: the version the current
    colour runs; STANDBY: colour_info of the idle colour. Returns version,
    standby_ready (the idle colour already runs it, with the current
    environment: a rollback is one switch, no container is started) and leaving (the history entry of the release
    being left, whose pre-deploy backup a rollback's restore uses)."""
    known = [r.get("version") for r in history if r.get("version")]
    if action == "deploy":
        if not wanted:
            raise ReleaseError("a deploy needs a version: -e version=TAG. Nothing was changed.")
        version = wanted
    elif action == "rollback":
        version = wanted or rollback_target(history, current)
        if not version:
            raise ReleaseError(
                f"Nothing to roll back to: the history has no release before {current or 'this one'} that was not "
                "itself rolled back (name one with -e rollback_to=VERSION). Nothing was changed."
            )
        if version not in known:
            seen = ", ".join(dict.fromkeys(known)) or "none"
            raise ReleaseError(
                f"Nothing to roll back to: version {version} is not in the release history ({seen}). "
                "Nothing was changed."
            )
    else:
        raise ReleaseError(f"unknown release action {action!r}; use deploy or rollback")
    leaving = [r for r in history if r.get("version") == current and current]
    return dict(
        version=version,
        # Not when it runs with an older environment (the app's database
        # credentials or settings changed since it started): then the
        # rollback starts VERSION again on it, with the env file as it is.
        standby_ready=bool(
            action == "rollback"
            and standby.get("running")
            and standby.get("version") == version
            and standby.get("env_current", True)
        ),
        leaving=leaving[-1] if leaving else {},
        pinned=pinned_digest(history, version) if action == "rollback" else "",
    )


def pinned_digest(history, version):
    """The registry digest (repo@sha256:...) VERSION was deployed from, newest
    record first: a rollback pulls exactly that image, even when the tag has
    since been moved or deleted. "" when no release of it recorded one (an
    image loaded from an archive, or history from before digests)."""
    for record in reversed(history):
        if record.get("version") == version and record.get("repo_digest"):
            return record["repo_digest"]
    return ""


def _stamp_seconds(stamp):
    """Seconds since the epoch of a history stamp (release_log.STAMP, UTC); None when unreadable."""
    try:
        return float(calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def fallback_colour(history, live, now, seconds):
    """The colour that may stand behind LIVE as its backup server at NOW
    (seconds since the epoch), or "": only the release a deploy just left,
    only while the deploy that left it is the newest record and its colour is
    LIVE, and only for SECONDS after that deploy's switch (``switched_at``, else
    its ``time``). Never after a rollback (the colour behind it is the release
    rolled back from), a switch back (no record: the newest one is older), or a
    deploy whose colour is not live."""
    if not history or not live or seconds <= 0:
        return ""
    last = history[-1]
    previous = last.get("previous_colour") or ""
    if last.get("action") != "deploy" or last.get("colour") != live or not previous or previous == live:
        return ""
    at = _stamp_seconds(last.get("switched_at") or last.get("time"))
    if at is None or now >= at + float(seconds):
        return ""
    return previous
