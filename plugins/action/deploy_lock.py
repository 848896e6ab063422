# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of onebox.platform.deploy_lock.

Only the controller can tell whether a run started on it still goes: it
records this controller's name, the PID of the ansible process and that
process's start in the holder, and when the lock is held it looks the
holder's process up (the module does the same on the server, for runs
started there, such as the on-server onebox program's).

A held lock is looked at before any waiting: a holder whose run is gone
fails the task at once (or, with break_stale, is broken, and the module
records that in the app's audit log); only a run that is alive or cannot be
checked is waited for, in slices, looking again after each. A lock whose run
is alive is never broken."""

from __future__ import annotations

import math
import os
import socket

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.onebox.platform.plugins.module_utils.deploy_lock import (
    combine,
    describe,
    liveness,
    process_start,
    refusal,
)

display = Display()

MODULE = "onebox.platform.deploy_lock"
# Seconds the module waits at a time before the controller looks again
# whether the holder's run still goes.
SLICE = 15.0


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("state", "present") != "present":
            return self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        # The worker's parent is the ansible-playbook (or ansible) process.
        here = socket.gethostname()
        args.setdefault("controller", here)
        args.setdefault("controller_pid", os.getppid())
        if "controller_pid_start" not in args:
            same = args["controller"] == here
            args["controller_pid_start"] = process_start(args["controller_pid"]) if same else ""
        want_break = boolean(args.pop("break_stale", False), strict=False)
        try:
            wait = max(float(args.get("wait") or 0), 0.0)
        except (TypeError, ValueError):
            # The module refuses it with its own message.
            return self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        check = bool(self._play_context.check_mode)
        waited, tries = 0.0, 0
        limit = 2 + 2 * math.ceil(wait / SLICE)
        while True:
            # First a look without waiting: a dead holder is known at once.
            step = 0.0 if tries == 0 else min(SLICE, wait - waited)
            result = self._execute_module(
                MODULE, module_args=dict(args, break_stale=False, wait=step), task_vars=task_vars
            )
            tries += 1
            waited += float(result.get("waited") or 0)
            holder = result.get("holder") or {}
            if not result.get("failed") or not holder.get("owner"):
                result["waited"] = round(waited, 3)
                return result
            state = combine(result.get("holder_run") or "unknown", liveness(holder))
            if want_break and state != "alive":
                if check:
                    return {
                        "changed": True,
                        "holder": {},
                        "waited": round(waited, 3),
                        "broke_stale": holder,
                        "holder_run": state,
                        "msg": f"would break the deploy lock held by {self._who(holder)}",
                    }
                return self._break(args, holder, state, waited, task_vars)
            if state == "gone" or check or waited >= wait or tries >= limit:
                return self._refused(result, holder, state, waited, want_break)
            if tries == 1:
                # A wait says what it waits for.
                run = "its run is still going" if state == "alive" else "its run cannot be checked from here"
                display.display(
                    f"{self._task.get_name()}: waiting up to {wait:g} s for deploy lock {args.get('path')}, "
                    f"held by {describe(holder)} ({run})"
                )

    @staticmethod
    def _who(holder):
        return f"{holder.get('owner', 'unknown')} (pid {holder.get('pid', '?')} on {holder.get('controller') or '?'})"

    def _break(self, args, holder, state, waited, task_vars):
        """Break the lock of a holder found gone (or, deploy_break_lock=true
        given, one that cannot be checked): by its id, so a lock taken again
        meanwhile is not broken. The module records the break."""
        if state == "gone":
            why = f"its run has ended (pid {holder.get('pid')} is gone from {holder.get('controller')})"
        else:
            where = holder.get("controller") or "no controller recorded"
            why = f"its run could not be checked from {socket.gethostname()} ({where}); deploy_break_lock=true given"
        if holder.get("id"):
            again = dict(args, break_id=holder["id"], wait=0, break_reason=why)
        else:  # a lock written before holders had ids, or whose holder.json is unreadable: the age rule decides
            again = dict(args, break_stale=True, wait=0, break_reason=f"{why}; older than stale_after")
        result = self._execute_module(MODULE, module_args=again, task_vars=task_vars)
        if not result.get("failed"):
            result["waited"] = round(waited, 3)
            if state == "unknown":
                result.setdefault("warnings", []).append(
                    f"the lock's run could not be checked from here ({holder.get('controller') or 'no controller'}"
                    " recorded); it was broken because deploy_break_lock=true was given"
                )
            return result
        now = result.get("holder") or {}
        if now.get("owner") and now.get("id") != holder.get("id"):
            # Another run took the lock between the look and the break: that one is not broken.
            state = combine(result.get("holder_run") or "unknown", liveness(now))
            return self._refused(result, now, state, waited, True, note=" Another run took the lock meanwhile.")
        if not now.get("owner"):
            return result  # the module failed for another reason: its message says which
        return self._refused(
            result,
            holder,
            state,
            waited,
            True,
            note=" It records no id, so it is broken only once older than stale_after.",
        )

    def _refused(self, result, holder, state, waited, want_break, note=""):
        # The error ansible-core 2.19+ captured holds the module's words; this message replaces them.
        result.pop("exception", None)
        result["failed"] = True
        result["holder_run"] = state
        result["waited"] = round(waited, 3)
        result["msg"] = refusal(self._task.args.get("path"), holder, round(waited, 1), state) + note
        if want_break:
            result["msg"] += " The lock was NOT broken."
        return result
