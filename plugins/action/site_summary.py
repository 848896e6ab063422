# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of onebox.platform.site_summary: the lines of what is on
and off (module_utils/site_plan.summary), and a warning for each thing that
is off. Nothing runs on the server."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.onebox.platform.plugins.module_utils import site_plan


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("apps", "switches", "settings"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            apps = site_plan.public(args.get("apps") or [])
            lines, warnings = site_plan.summary(
                apps, dict(args.get("switches") or {}), dict(args.get("settings") or {})
            )
        except (KeyError, TypeError, ValueError) as exc:
            return dict(result, failed=True, msg=f"site_summary: {exc}")
        # Shown as debug shows its message, without -v.
        result.update(changed=False, msg=lines, _ansible_verbose_always=True)
        if warnings:
            result["warnings"] = warnings
        return result
