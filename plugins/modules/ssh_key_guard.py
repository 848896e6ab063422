#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ssh_key_guard
short_description: Refuse an authorized-keys change that removes the key of the SSH session in use
version_added: "0.2.0"
description:
  - Run it before replacing a user's authorized keys (for example with C(ansible.posix.authorized_key) and
    C(exclusive=true)). When the play logs in over SSH as that user, the module finds which key the session
    logged in with and fails, changing nothing, if that key is not among the keys the user will have.
    Without this the change succeeds and the next connection is refused - a lock-out.
  - The session's key comes from sshd's C(ExposeAuthInfo) file (O(session_auth), the contents of
    C($SSH_USER_AUTH)), or else from sshd's C(Accepted publickey) line for the session's client address and
    port (C(SSH_CONNECTION)) in the systemd journal or C(/var/log/auth.log). Read the session facts without
    C(become) (sudo drops C(SSH_CONNECTION)) and run this module with C(become) (the journal is root's).
  - A session that logged in with a password is not cut by a key change; the module passes and says so.
  - When the session's key cannot be found, it fails (O(unknown=fail)) or warns (O(unknown=warn)).
  - Reads only; changes nothing.
author:
  - onebox.platform developers (@onebox)
options:
  user:
    description: The account whose authorized keys are about to change.
    type: str
    required: true
  keys:
    description: The public keys (authorized_keys lines) the account will have after the change.
    type: list
    elements: str
    required: true
  exclusive:
    description:
      - Whether keys not in O(keys) will be removed. When V(false) nothing is removed and the module passes.
    type: bool
    default: true
  session_user:
    description: The user the play logs in as (C(id -un) without become).
    type: str
    default: ""
  ssh_connection:
    description:
      - C($SSH_CONNECTION) of the play's session, read without become. Empty when the play does not run
        over SSH (a local or docker connection); then the module passes.
    type: str
    default: ""
  session_auth:
    description: Contents of the file C($SSH_USER_AUTH) names (sshd C(ExposeAuthInfo yes)), if any.
    type: str
    default: ""
  unknown:
    description: What to do when the session's key cannot be found.
    type: str
    default: fail
    choices: [fail, warn]
  hint:
    description: A sentence added to the failure message, such as the variable that turns this check off.
    type: str
    default: ""
notes:
  - Supports check mode (it only reads).
extends_documentation_fragment:
  - onebox.platform.attributes.check_only
"""

EXAMPLES = r"""
- name: Read the SSH session (without become)
  ansible.builtin.shell: 'id -un; echo "${SSH_CONNECTION:-}"; cat "${SSH_USER_AUTH:-/dev/null}" 2>/dev/null || true'
  become: false
  register: session
  changed_when: false

- name: Refuse to remove the key this play logs in with
  onebox.platform.ssh_key_guard:
    user: deploy
    keys: "{{ deploy_keys }}"
    exclusive: true
    session_user: "{{ session.stdout_lines[0] }}"
    ssh_connection: "{{ session.stdout_lines[1] | default('') }}"
    session_auth: "{{ session.stdout_lines[2:] | join('\n') }}"
  become: true
"""

RETURN = r"""
session_key:
  description: Fingerprint of the key the session logged in with (empty when not found or not a key login).
  returned: always
  type: str
  sample: SHA256:2bO1aR0wWgDuVw1OrD6rU6E3mSYyD0mMUKmn2S1rzkA
source:
  description: Where the session's login was found (V(SSH_USER_AUTH), V(journal), V(auth.log)), or V(none).
  returned: always
  type: str
  sample: journal
kept:
  description: Whether the session keeps a way in after the change.
  returned: always
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils import ssh_session

AUTH_LOG = "/var/log/auth.log"
JOURNAL_LINES = "20000"


def journal_lines(module):
    journalctl = module.get_bin_path("journalctl")
    if not journalctl:
        return None
    rc, out, _err = module.run_command(
        [journalctl, "--no-pager", "-q", "-o", "cat", "-t", "sshd", "-t", "sshd-session", "-n", JOURNAL_LINES]
    )
    if rc != 0:
        return None
    return out.splitlines()


def auth_log_lines():
    if not os.path.exists(AUTH_LOG):
        return None
    with open(AUTH_LOG, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * 1024 * 1024))
        return f.read().decode("utf-8", "replace").splitlines()


def session_login(module, p):
    """(method, fingerprint, source) of the session's login, or (None, None, 'none')."""
    found = ssh_session.from_user_auth(p["session_auth"])
    if found:
        return found[0], found[1], "SSH_USER_AUTH"
    client = ssh_session.parse_connection(p["ssh_connection"])
    for source, lines in (("journal", journal_lines(module)), ("auth.log", auth_log_lines())):
        if lines is None:
            continue
        found = ssh_session.from_log(lines, p["session_user"], client[0], client[1])
        if found:
            return found[0], found[1], source
    return None, None, "none"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            user=dict(type="str", required=True),
            keys=dict(type="list", elements="str", required=True, no_log=False),
            exclusive=dict(type="bool", default=True),
            session_user=dict(type="str", default=""),
            ssh_connection=dict(type="str", default=""),
            session_auth=dict(type="str", default=""),
            unknown=dict(type="str", default="fail", choices=["fail", "warn"]),
            hint=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, session_key="", source="none", kept=True)

    if ssh_session.parse_connection(p["ssh_connection"]) is None:
        module.exit_json(msg="The play does not run over SSH; no session to keep.", **result)
    if p["session_user"] != p["user"]:
        module.exit_json(
            msg=f"The play logs in as {p['session_user']!r}, not {p['user']!r}; its session keeps its way in.", **result
        )
    if not p["exclusive"]:
        module.exit_json(msg="Keys are only added; the session's key stays.", **result)

    method, fp, source = session_login(module, p)
    result.update(session_key=fp or "", source=source)
    hint = f" {p['hint']}" if p["hint"] else ""
    addr = p["ssh_connection"].split()[0]

    if method is None:
        msg = (
            f"Cannot tell which key this SSH session (user {p['user']}, from {addr}) logged in with: sshd's "
            f"ExposeAuthInfo is off and no 'Accepted publickey' line for it is in the journal or {AUTH_LOG}. "
            f"The new key list might lock you out. Check that the key you log in with is in it.{hint}"
        )
        if p["unknown"] == "fail":
            result["kept"] = False
            module.fail_json(msg=msg + " Nothing was changed.", **result)
        module.warn(msg)
        module.exit_json(msg=msg, **result)

    if method != "publickey":
        module.exit_json(msg=f"The session logged in with {method}, not a key; a key change does not cut it.", **result)

    new_keys = {ssh_session.fingerprint(line) for k in p["keys"] for line in k.splitlines()} - {None}
    if fp in new_keys:
        module.exit_json(msg=f"The session's key {fp} stays in {p['user']}'s authorized keys.", **result)

    result["kept"] = False
    module.fail_json(
        msg=(
            f"This change would remove the key this play logs in with ({fp}, user {p['user']}, from {addr}): "
            f"the authorized keys are replaced by the {len(new_keys)} key(s) given, and {fp} is not one of them, "
            f"so your next connection would be refused. Add that public key to the list (keep it until the new "
            f"key works), or run the change over a session that uses one of the new keys.{hint} Nothing was changed."
        ),
        **result,
    )


if __name__ == "__main__":
    main()
