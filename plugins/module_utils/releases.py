# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decisions over an app's release history (releases.jsonl, oldest first).
Standard library only."""

from __future__ import annotations


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
