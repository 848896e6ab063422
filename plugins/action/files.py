# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of onebox.platform.files: each entry's src is looked up
as ansible.builtin.copy looks it up (the role's files/, then the path as
given), read here and sent as content_b64, so that every file of the list
reaches the server in the one module run."""

from __future__ import annotations

import base64

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

MODULE = "onebox.platform.files"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        entries = args.get("files")
        if not isinstance(entries, list):
            raise AnsibleActionFail("files: 'files' must be a list of entries (path, src or content, mode...)")
        sent = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise AnsibleActionFail(f"files: each entry must be a dict, not {entry!r}")
            entry = dict(entry)
            src = entry.pop("src", None)
            if src is not None:
                try:
                    found = self._find_needle("files", src)
                    with open(found, "rb") as fh:
                        entry["content_b64"] = base64.b64encode(fh.read()).decode("ascii")
                except (AnsibleError, OSError) as exc:
                    raise AnsibleActionFail(f"files: cannot read {src!r} for {entry.get('path')}: {exc}") from exc
            sent.append(entry)
        args["files"] = sent
        result.update(self._execute_module(MODULE, module_args=args, task_vars=task_vars))
        return result
