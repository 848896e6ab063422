#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files
short_description: Write a list of files and directories on the server in one run
version_added: "0.5.0"
description:
  - Puts every entry of O(files) in place, in order, in one module run. An entry is a directory, or a file with the
    given content, mode, owner and group. What already matches is left alone.
  - A file that differs is written to a temporary file in its directory, given its mode and owner, synced and
    renamed over the old one, so a reader sees the old file or the new one, never half of one. A file whose content
    matches but whose mode or owner does not is only given them.
  - Meant for the collection's own files (the on-server programs, systemd units, settings), where one
    M(ansible.builtin.copy) or M(ansible.builtin.template) task per file costs two module runs each on every
    C(site.yml) run. A file that must pass a check before it replaces a live one (C(haproxy.cfg), C(sshd_config))
    belongs in a template task with C(validate), not here.
  - Its action plugin reads each O(files[].src) on the controller (a role's C(files/) or a path) and sends it along.
    A template goes in as O(files[].content) from C(lookup('ansible.builtin.template', ...)).
author:
  - onebox.platform developers (@onebox)
options:
  files:
    description: The files and directories, created in this order (a directory before the files in it).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path on the server.
        type: path
        required: true
      state:
        description: V(file) writes the content; V(directory) makes the directory (and missing parents, C(0755)).
        type: str
        choices: [file, directory]
        default: file
      src:
        description:
          - A file on the controller (looked up like M(ansible.builtin.copy)'s C(src)); read by the action plugin.
          - One of O(files[].src) and O(files[].content) with V(file).
        type: str
      content:
        description: The file's text.
        type: str
      content_b64:
        description: The file's bytes, base64 (what the action plugin sends for O(files[].src)).
        type: str
      mode:
        description:
          - Octal mode as a string, such as V("0644"), or a number (an unquoted C(0644) in YAML is the number 420, and
            is read as that). Default V("0644") for a file and V("0755") for a directory.
        type: raw
      missing:
        description:
          - What to do when O(files[].path) does not exist (nor does an entry before it create it) - V(create) it,
            or V(skip) the entry, so that only what is there gets the mode and owner (a package's directories, say).
        type: str
        choices: [create, skip]
        default: create
      owner:
        description: Owner's user name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
notes:
  - Supports check mode (reports what it would write) and diff (text files up to 64 KiB; others by name).
  - Use C(no_log) on the task when a content is a secret.
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
"""

EXAMPLES = r"""
- name: Install the onebox program
  onebox.platform.files:
    files:
      - {path: /usr/local/lib/onebox/lib, state: directory}
      - {path: /usr/local/lib/onebox/lib/haproxy.py, src: "{{ role_path }}/../../plugins/module_utils/haproxy.py"}
      - path: /usr/local/bin/onebox
        content: |
          #!/bin/sh
          exec /usr/bin/python3 /usr/local/lib/onebox/cli/onebox.py "$@"
        mode: "0755"
      - path: /etc/systemd/system/onebox-metrics.timer
        content: "{{ lookup('ansible.builtin.template', 'onebox-metrics.timer.j2') }}"
  notify: Reload systemd

- name: Keep cron's directories private, those that are there
  onebox.platform.files:
    files: "{{ ['/etc/cron.d', '/etc/cron.daily'] | map('community.general.dict_kv', 'path')
               | map('combine', {'state': 'directory', 'mode': '0700', 'missing': 'skip'}) }}"
"""

RETURN = r"""
changed_paths:
  description: The paths written, created or given a new mode or owner (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/usr/local/bin/onebox]
"""

import base64
import grp
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

DIFF_LIMIT = 64 * 1024


class EntryError(Exception):
    pass


def ids(entry):
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid
    except KeyError:
        raise EntryError(f"{entry['path']}: there is no user {entry['owner']!r} on this server") from None
    try:
        gid = grp.getgrnam(entry["group"]).gr_gid
    except KeyError:
        raise EntryError(f"{entry['path']}: there is no group {entry['group']!r} on this server") from None
    return uid, gid


def wanted_mode(entry):
    text = entry["mode"] or ("0755" if entry["state"] == "directory" else "0644")
    if isinstance(text, int) and not isinstance(text, bool):
        mode = text
    else:
        try:
            mode = int(str(text), 8)
        except ValueError:
            raise EntryError(f"{entry['path']}: mode {text!r} is not an octal mode such as 0644") from None
    if not 0 <= mode <= 0o7777:
        raise EntryError(f"{entry['path']}: mode {text!r} is out of range")
    return mode


def wanted_bytes(entry):
    if entry["src"] is not None:
        raise EntryError(f"{entry['path']}: src reached the module; it is read by the action plugin (use FQCN files)")
    given = [k for k in ("content", "content_b64") if entry[k] is not None]
    if len(given) != 1:
        raise EntryError(f"{entry['path']}: give exactly one of src and content")
    if entry["content"] is not None:
        return entry["content"].encode("utf-8")
    try:
        return base64.b64decode(entry["content_b64"], validate=True)
    except ValueError:
        raise EntryError(f"{entry['path']}: content_b64 is not base64") from None


def text_or_none(data):
    if data is None or len(data) > DIFF_LIMIT:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_existing(path):
    """(lstat, bytes or None for a non-file), or (None, None) when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return st, None
    with open(path, "rb") as fh:
        return st, fh.read()


def write_file(path, data, mode, uid, gid):
    directory = os.path.dirname(path) or "/"
    fd, tmp = tempfile.mkstemp(prefix=".onebox-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchown(fh.fileno(), uid, gid)
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def apply_directory(entry, check, planned):
    """What changes for a directory entry: a list of words, empty when it matches."""
    path, mode = entry["path"], wanted_mode(entry)
    uid, gid = ids(entry)
    st = read_existing(path)[0]
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise EntryError(f"{path} exists and is not a directory; move it away first")
    if st is None:
        if not check:
            os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
            os.mkdir(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        planned.add(path)
        return ["created"], None
    return fix_attributes(path, st, mode, uid, gid, check), None


def fix_attributes(path, st, mode, uid, gid, check):
    changes = []
    if stat.S_IMODE(st.st_mode) != mode:
        changes.append(f"mode {stat.S_IMODE(st.st_mode):04o}->{mode:04o}")
    if (st.st_uid, st.st_gid) != (uid, gid):
        changes.append("owner")
    if changes and not check:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return changes


def apply_file(entry, check, planned):
    path, mode = entry["path"], wanted_mode(entry)
    uid, gid = ids(entry)
    data = wanted_bytes(entry)
    st, before = read_existing(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise EntryError(f"{path} is a directory; a file was asked for")
    if st is not None and before == data:
        return fix_attributes(path, st, mode, uid, gid, check), None
    parent = os.path.dirname(path)
    if not os.path.isdir(parent) and parent not in planned:
        raise EntryError(f"{path}: its directory does not exist (list it first, state=directory)")
    if not check:
        write_file(path, data, mode, uid, gid)
    diff = dict(before_header=path, after_header=path)
    old, new = text_or_none(before) if before is not None else "", text_or_none(data)
    if old is None or new is None:
        diff.update(before=f"({'absent' if st is None else 'other content'})\n", after="(new content)\n")
    else:
        diff.update(before=old, after=new)
    return ["created" if st is None else "content"], diff


def main():
    entry_spec = dict(
        path=dict(type="path", required=True),
        state=dict(type="str", choices=["file", "directory"], default="file"),
        src=dict(type="str"),
        content=dict(type="str"),
        content_b64=dict(type="str"),
        mode=dict(type="raw"),
        missing=dict(type="str", choices=["create", "skip"], default="create"),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
    )
    module = AnsibleModule(
        argument_spec=dict(files=dict(type="list", elements="dict", required=True, options=entry_spec)),
        supports_check_mode=True,
    )
    changed, diffs, done, planned = [], [], [], set()
    for entry in module.params["files"]:
        try:
            if not os.path.isabs(entry["path"]):
                raise EntryError(f"{entry['path']!r} is not an absolute path")
            if entry["missing"] == "skip" and not os.path.lexists(entry["path"]) and entry["path"] not in planned:
                continue
            step = apply_directory if entry["state"] == "directory" else apply_file
            changes, diff = step(entry, module.check_mode, planned)
        except (EntryError, OSError) as exc:
            module.fail_json(
                msg=f"files: {exc}. Written before it: {', '.join(done) or 'nothing'}; nothing after it was changed.",
                changed=bool(done),
                changed_paths=done,
            )
        if changes:
            changed.append(entry["path"])
            if not module.check_mode:
                done.append(entry["path"])
            diffs.append(
                diff
                or dict(
                    before_header=entry["path"],
                    after_header=entry["path"],
                    before="",
                    after=f"({', '.join(changes)})\n",
                )
            )
    result = dict(changed=bool(changed), changed_paths=changed)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
