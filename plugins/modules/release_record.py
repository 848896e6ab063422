#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_record
short_description: Append to an app's release history and audit log; set or clear its maintenance colour
version_added: "0.2.0"
description:
  - Appends one release (a JSON object) to the app's release history (C(releases.jsonl), oldest first) and/or
    one line to its audit log (C(<UTC time> <action> <detail> by=<who>)).
  - Every line is appended, even when identical to an earlier one (two deploys of the same version in the same
    second are two releases), with C(O_APPEND) and an fsync, so a crash never leaves half a line.
  - The same code (module_utils release_log) is what the app_state module and the on-server C(onebox)
    program read and write these files with.
  - A torn last line of the history (no newline and not JSON, a write cut short) is kept aside in
    C(<history>.torn-<UTC time>) and the history rewritten without it (a temporary file, fsync, rename) before
    the release is appended; a warning names the file. A bad line that is not the last one is left alone.
  - An O(actor) with a newline or another control character, or an O(action) that is not one word, fails the
    module before anything is written. Control characters in O(detail) are written escaped (C(\x1b)).
author:
  - onebox.platform developers (@onebox)
options:
  history:
    description: Path of the release history. Required with O(release).
    type: path
  release:
    description: The release to append (action, version, image, colour...). A missing C(time) is now (UTC).
    type: dict
  audit_log:
    description: Path of the audit log. Required with O(action).
    type: path
  action:
    description: The audit event (V(deploy-start), V(deploy-ok), V(rollback-ok), V(switch-back)...).
    type: str
  detail:
    description: The audit event's details (C(key=value) words).
    type: str
    default: ""
  actor:
    description: Who did it (CI job, user); no newlines or control characters, and not C( by=).
    type: str
    default: ""
  maintenance_file:
    description:
      - The app's maintenance file, which names the colour C(maintenance=off) brings back; while it exists and no
        colour is live, the app is in maintenance. Required with O(maintenance).
    type: path
  maintenance:
    description:
      - A colour to write to O(maintenance_file), or the empty string to remove it (out of maintenance).
      - The same code (module_utils release_log) is what app_state and the C(onebox) program read it with.
    type: str
notes:
  - Supports check mode (reports what it would append) and diff.
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
"""

EXAMPLES = r"""
- name: Into maintenance, remembering the live colour
  onebox.platform.release_record:
    maintenance_file: /var/lib/onebox/shop/maintenance-colour
    maintenance: blue

- name: Record the release
  onebox.platform.release_record:
    history: /var/lib/onebox/shop/releases.jsonl
    release: {action: deploy, version: v42, colour: green}
    audit_log: /var/lib/onebox/shop/audit.log
    action: deploy-ok
    detail: version=v42 colour=green
    actor: ci
"""

RETURN = r"""
release:
  description: The release as appended (with its time).
  returned: when O(release) is given
  type: dict
audit:
  description: The audit line as appended.
  returned: when O(action) is given
  type: str
  sample: 2026-11-24T10:00:00Z deploy-ok version=v42 colour=green by=ci
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils import release_log


def main():
    module = AnsibleModule(
        argument_spec=dict(
            history=dict(type="path"),
            release=dict(type="dict"),
            audit_log=dict(type="path"),
            action=dict(type="str"),
            detail=dict(type="str", default=""),
            actor=dict(type="str", default=""),
            maintenance_file=dict(type="path"),
            maintenance=dict(type="str"),
        ),
        required_by=dict(release=["history"], action=["audit_log"], maintenance=["maintenance_file"]),
        required_one_of=[["release", "action", "maintenance"]],
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=p["release"] is not None or bool(p["action"]))
    diff = []
    if p["action"]:
        # Refused before anything is written (a newline in the actor would forge audit lines).
        try:
            release_log.audit_line(p["action"], p["detail"], p["actor"])
        except release_log.ReleaseLogError as exc:
            module.fail_json(msg=f"Cannot record {p['action']!r} in {p['audit_log']}: {exc} Nothing was changed.")
    try:
        if p["maintenance"] is not None:
            before = release_log.read_maintenance(p["maintenance_file"], None)
            if before != p["maintenance"]:
                result["changed"] = True
                name = p["maintenance_file"]
                diff.append(dict(before_header=name, after_header=name, before=before, after=p["maintenance"]))
                if not module.check_mode:
                    if p["maintenance"]:
                        release_log.write_maintenance(p["maintenance_file"], p["maintenance"])
                    else:
                        release_log.clear_maintenance(p["maintenance_file"])
        if p["release"] is not None:
            release = dict(p["release"])
            release.setdefault("time", release_log.utc_stamp())
            if not module.check_mode:
                release = release_log.append_release(p["history"], release, warn=module.warn)
            result["release"] = release
            diff.append(dict(before_header=p["history"], after_header=p["history"], before="", after=f"{release}\n"))
        if p["action"]:
            if module.check_mode:
                line = release_log.audit_line(p["action"], p["detail"], p["actor"])
            else:
                line = release_log.append_audit(p["audit_log"], p["action"], p["detail"], p["actor"])
            result["audit"] = line
            diff.append(dict(before_header=p["audit_log"], after_header=p["audit_log"], before="", after=line + "\n"))
    except (OSError, release_log.ReleaseLogError) as exc:
        module.fail_json(msg=f"Cannot write the release history, audit log or maintenance file: {exc}")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
