# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of onebox.platform.deploy_lock.

Only the controller can tell whether the run holding a lock still goes: it
records this controller's name and the PID of the ansible process in the
holder, and when the lock is held by a run started here it looks that
process up. A lock whose run is alive is never broken."""

from __future__ import annotations

import os
import socket

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import liveness, refusal

MODULE = "onebox.platform.deploy_lock"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("state", "present") != "present":
            return self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        # The worker's parent is the ansible-playbook (or ansible) process.
        args.setdefault("controller", socket.gethostname())
        args.setdefault("controller_pid", os.getppid())
        want_break = boolean(args.pop("break_stale", False), strict=False)
        first = self._execute_module(MODULE, module_args=dict(args, break_stale=False), task_vars=task_vars)
        holder = first.get("holder") or {}
        if not first.get("failed") or not holder.get("owner"):
            return first
        state = liveness(holder)
        if want_break and state != "alive":
            if holder.get("id"):
                again = dict(args, break_id=holder["id"], wait=0)
            else:  # a lock written before holders had ids: the age rule decides
                again = dict(args, break_stale=True, wait=0)
            result = self._execute_module(MODULE, module_args=again, task_vars=task_vars)
            if not result.get("failed") and state == "unknown":
                result.setdefault("warnings", []).append(
                    f"the lock's run could not be checked from here ({holder.get('controller') or 'no controller'}"
                    " recorded); it was broken because deploy_break_lock=true was given"
                )
            if not result.get("failed") or not holder.get("id"):
                return result
            first = result
        first["holder_run"] = state
        first["msg"] = refusal(self._task.args.get("path"), holder, float(args.get("wait") or 0), state)
        if want_break and state == "alive":
            first["msg"] += " The lock was NOT broken."
        return first
