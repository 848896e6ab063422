#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_lock
short_description: Take or release the deploy lock so two deploys never race
version_added: "0.1.0"
description:
  - The lock is a directory created atomically with C(mkdir), holding a C(holder.json) that says who
    holds it, since when, for which version and why.
  - A second deploy waits up to O(wait) seconds, then fails naming the holder.
  - The holder records the controller it runs on and the PID of its C(ansible-playbook) process. When the
    lock is held, the action side of this module checks on the controller whether that run still goes, and
    says so; it names the fix (wait, or C(deploy_break_lock=true)) that fits.
  - With O(break_stale=true) a held lock is broken only when its run is gone (started on this controller,
    its process ended), cannot be checked (started on another machine; a warning says so), or is older
    than O(stale_after). The lock of a run that is still alive is never broken. A dead deploy never
    silently lets another one in.
  - Released with O(state=absent); with O(token) only if this run still holds it.
author:
  - onebox.platform developers (@onebox)
options:
  path:
    description: The lock directory.
    type: path
    required: true
  state:
    description: V(present) takes the lock, V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description: Who takes it (user, CI job).
    type: str
    default: unknown
  version:
    description: The version being deployed.
    type: str
    default: ""
  reason:
    description: Why (shown to whoever finds the lock taken).
    type: str
    default: ""
  wait:
    description: Seconds to wait for a held lock.
    type: float
    default: 0
  break_stale:
    description: Break a lock older than O(stale_after).
    type: bool
    default: false
  stale_after:
    description: Age in seconds after which a lock counts as stale.
    type: float
    default: 3600
  break_id:
    description:
      - Break the lock only if its holder has this public id (C(id) in RV(holder)); set by the action side after it
        found that holder's run gone, so a lock taken again meanwhile is not broken.
    type: str
  controller:
    description: Host name of the controller taking the lock; the action side sets it.
    type: str
    default: ""
  controller_pid:
    description: PID of the C(ansible-playbook) process taking the lock; the action side sets it.
    type: int
    default: 0
  token:
    description: With O(state=absent), release only if the lock still carries this token.
    type: str
notes:
  - Check mode reports whether the lock is free and changes nothing.
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the target.
    support: full
  diff_mode:
    description: Returns details on what has changed (or would change in check mode).
    support: none
"""

EXAMPLES = r"""
- name: Take the deploy lock, waiting up to 5 minutes
  onebox.platform.deploy_lock:
    path: /var/lib/onebox/shop/deploy.lock
    owner: "{{ lookup('ansible.builtin.env', 'USER') }}"
    version: "{{ app_version }}"
    reason: "deploy from CI run 42"
    wait: 300
  register: lock

- name: Release it
  onebox.platform.deploy_lock:
    path: /var/lib/onebox/shop/deploy.lock
    state: absent
    token: "{{ lock.holder.token }}"
"""

RETURN = r"""
holder:
  description:
    - Who holds the lock now (after taking it), or who held it (after releasing, or when refused).
    - The token is returned only to the run that took the lock.
  returned: always
  type: dict
  sample:
    owner: alice
    version: v42
    message: hotfix
    host: web1
    controller: laptop
    pid: 4242
    since: "2026-11-23T10:15:00+00:00"
    id: 9c1e2d3f4a5b
    token: 3f2a
holder_run:
  description: When the lock was held by another run, whether that run still goes, seen from the controller.
  returned: when refused
  type: str
  sample: gone
waited:
  description: Seconds spent waiting.
  returned: state=present
  type: float
broke_stale:
  description: The stale holder that was removed, if any.
  returned: state=present
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import (
    LockError,
    acquire,
    describe,
    read_holder,
    release,
)


def public(holder):
    """Another holder's details, without its token: only the run that took
    the lock may release it by token."""
    return {k: v for k, v in (holder or {}).items() if k != "token"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            owner=dict(type="str", default="unknown"),
            version=dict(type="str", default=""),
            reason=dict(type="str", default=""),
            wait=dict(type="float", default=0.0),
            break_stale=dict(type="bool", default=False),
            stale_after=dict(type="float", default=3600.0),
            break_id=dict(type="str"),
            controller=dict(type="str", default=""),
            controller_pid=dict(type="int", default=0),
            token=dict(type="str", no_log=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "absent":
            holder = read_holder(p["path"])
            if module.check_mode:
                module.exit_json(changed=holder is not None, holder=public(holder))
            released, holder = release(p["path"], p["token"])
            module.exit_json(changed=released, holder=public(holder))
        if module.check_mode:
            holder = read_holder(p["path"])
            if holder:
                module.fail_json(msg=f"deploy lock {p['path']} is held by {holder.get('owner')}", holder=public(holder))
            module.exit_json(changed=True, holder={}, waited=0.0, broke_stale={})
        holder, waited, broke = acquire(
            p["path"],
            p["owner"],
            version=p["version"],
            message=p["reason"],
            wait=p["wait"],
            break_stale=p["break_stale"],
            stale_after=p["stale_after"],
            break_id=p["break_id"],
            controller=p["controller"],
            pid=p["controller_pid"],
        )
        if broke:
            module.warn(f"broke a stale deploy lock held by {describe(broke)}")
        module.exit_json(changed=True, holder=holder, waited=waited, broke_stale=public(broke))
    except LockError as exc:
        module.fail_json(msg=str(exc), holder=public(read_holder(p["path"])))
    except OSError as exc:
        module.fail_json(msg=f"cannot use deploy lock {p['path']}: {exc}")


if __name__ == "__main__":
    main()
