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
  - The holder records the controller it runs on, the PID of its C(ansible-playbook) process and when that
    process started. When the lock is held, the action side of this module checks on the controller (and the
    module on the server, for runs started there such as the C(onebox) program's) whether that run still goes,
    before waiting at all. A holder whose run is gone makes the task fail at once, whatever O(wait) says, with
    the fix (C(deploy_break_lock=true)); a run that is alive, or that cannot be checked, is waited for.
  - With O(break_stale=true) a held lock is broken only when its run is gone (started on this controller or
    on the server, its process ended), cannot be checked (started on another machine; a warning says so), or
    is older than O(stale_after). The lock of a run that is still alive is never broken. A dead deploy never
    silently lets another one in. Every break is recorded in O(audit_log) when given.
  - Released with O(state=absent); with O(token) only if the lock carries exactly that token. A lock that
    carries another token, none, or an unreadable C(holder.json) is left alone and the task fails saying whose
    it is. The lock is renamed aside before it is removed, so a lock another run took meanwhile is never removed.
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
    description:
      - Break a held lock whose run is gone or cannot be checked (the action side decides, see above), or, on
        the module alone, one older than O(stale_after). Playbooks pass C(deploy_break_lock) here.
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
  controller_pid_start:
    description:
      - Boot id and start tick of O(controller_pid) on the controller, so that a PID given to another process
        later is not taken for the run; the action side sets it.
    type: str
  audit_log:
    description:
      - The app's audit log. A break of the lock adds a line there (who broke it, whose lock it was, why).
    type: path
  break_reason:
    description: Why the lock is broken, for O(audit_log); set by the action side.
    type: str
    default: ""
  token:
    description: With O(state=absent), release only if the lock still carries this token.
    type: str
notes:
  - Check mode reports whether the lock is free and changes nothing.
extends_documentation_fragment:
  - onebox.platform.attributes.check_only
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

- name: Take it for a reload, breaking a lock left by a dead run (recorded in the audit log)
  onebox.platform.deploy_lock:
    path: /var/lib/onebox/shop/deploy.lock
    owner: ops
    reason: HAProxy configuration change
    wait: 600
    break_stale: "{{ deploy_break_lock | default(false) | bool }}"
    audit_log: /var/lib/onebox/shop/audit.log
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
  description:
    - When the lock was held by another run, whether that run still goes (V(alive), V(gone) or V(unknown)),
      seen from the controller and from the server.
  returned: when refused
  type: str
  sample: gone
waited:
  description: Seconds spent waiting for the lock (0 when its holder was found gone).
  returned: state=present
  type: float
broke_stale:
  description: The holder whose lock was broken, if any (without its token).
  returned: state=present
  type: dict
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import (
    LockError,
    acquire,
    age_seconds,
    describe,
    liveness,
    read_holder,
    release,
)
from ansible_collections.onebox.platform.plugins.module_utils.release_log import append_audit


def public(holder):
    """Another holder's details, without its token: only the run that took
    the lock may release it by token."""
    return {k: v for k, v in (holder or {}).items() if k != "token"}


def audit_break(module, broke):
    p = module.params
    why = p["break_reason"] or f"older than stale_after ({p['stale_after']:g} s): {age_seconds(broke):.0f} s old"
    detail = f"lock={p['path']} holder={describe(broke)} id={broke.get('id') or '-'} why={why}"
    if p["controller"]:
        detail += f" from={p['controller']}"
    try:
        append_audit(p["audit_log"], "lock-broken", detail, p["owner"])
    except OSError as exc:
        module.warn(f"the break of {p['path']} could not be recorded in {p['audit_log']}: {exc}")


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
            controller_pid_start=dict(type="str"),
            audit_log=dict(type="path"),
            break_reason=dict(type="str", default=""),
            token=dict(type="str", no_log=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    here = socket.gethostname()

    def check_run(holder):
        # This machine's view: a run started here (the onebox program, a local connection) can be looked up.
        return liveness(holder, here=here)

    try:
        if p["state"] == "absent":
            holder = read_holder(p["path"])
            if module.check_mode:
                ours = holder is not None and (not p["token"] or holder.get("token") == p["token"])
                module.exit_json(changed=ours, holder=public(holder))
            released, holder = release(p["path"], p["token"])
            if not released and p["token"]:
                module.warn(
                    f"deploy lock {p['path']} was no longer there to release: another run broke it while this one "
                    "held it (see the app's audit log)"
                )
            module.exit_json(changed=released, holder=public(holder))
        if module.check_mode:
            holder = read_holder(p["path"])
            if holder:
                module.fail_json(
                    msg=f"deploy lock {p['path']} is held by {describe(holder)}",
                    holder=public(holder),
                    holder_run=check_run(holder),
                    waited=0.0,
                )
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
            pid_start=p["controller_pid_start"],
            check_run=check_run,
        )
        if broke:
            module.warn(f"broke a stale deploy lock held by {describe(broke)}")
            if p["audit_log"]:
                audit_break(module, broke)
        module.exit_json(changed=True, holder=holder, waited=waited, broke_stale=public(broke))
    except LockError as exc:
        now = read_holder(p["path"]) if exc.holder is None else exc.holder
        result = dict(msg=str(exc), holder=public(now))
        if p["state"] == "present":
            result.update(waited=exc.waited, holder_run=exc.run or (check_run(now) if now else "unknown"))
        module.fail_json(**result)
    except OSError as exc:
        module.fail_json(msg=f"cannot use deploy lock {p['path']}: {exc}. Nothing was changed.")


if __name__ == "__main__":
    main()
