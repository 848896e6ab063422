# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which key an SSH session logged in with, and public key fingerprints.

Used by the ssh_key_guard module so that a change of authorized keys never
removes the key of the session it runs over."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

KEY_TYPE = re.compile(r"^(ssh-(rsa|dss|ed25519|ed448)|ecdsa-sha2-\S+|sk-\S+)(-cert-v01@openssh\.com)?$")


def key_blob(line):
    """The decoded key of an authorized_keys or .pub line (options and
    comment allowed), or None when the line holds no key."""
    tokens = line.strip().split()
    for i, token in enumerate(tokens[:-1]):
        if KEY_TYPE.match(token):
            try:
                return base64.b64decode(tokens[i + 1], validate=True)
            except (binascii.Error, ValueError):
                return None
    return None


def fingerprint(line):
    """OpenSSH's SHA256 fingerprint (as `ssh-keygen -lf` prints it) of a
    public key line, or None."""
    blob = key_blob(line)
    if blob is None:
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_connection(ssh_connection):
    """(client address, client port) from SSH_CONNECTION, or None."""
    fields = (ssh_connection or "").split()
    if len(fields) != 4:
        return None
    return fields[0], fields[1]


def from_user_auth(text):
    """What sshd's ExposeAuthInfo file says: ('publickey', fingerprint) for a
    key login, ('password', None) for a login with no key, None when empty."""
    methods = [line.split(None, 1) for line in (text or "").splitlines() if line.strip()]
    for method in methods:
        if method[0] == "publickey" and len(method) > 1:
            return "publickey", fingerprint(method[1])
    if methods:
        return "password", None
    return None


ACCEPTED = re.compile(
    r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<addr>\S+) port (?P<port>\d+) ssh2"
    r"(?:: (?P<type>\S+) (?P<fp>SHA256:\S+))?"
)


def from_log(lines, user, addr, port):
    """The newest sshd 'Accepted ...' line for USER from ADDR:PORT in LINES
    (oldest first): ('publickey', fingerprint) or (method, None), or None."""
    found = None
    for line in lines:
        m = ACCEPTED.search(line)
        if m and m.group("user") == user and m.group("addr") == addr and m.group("port") == port:
            found = m
    if found is None:
        return None
    if found.group("method") == "publickey":
        return "publickey", found.group("fp")
    return found.group("method"), None
