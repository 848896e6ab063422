"""module_utils/ssh_session: key fingerprints as ssh-keygen prints them, and
which key a session logged in with, from sshd's own records."""

from __future__ import annotations

import subprocess

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import ssh_session


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for kind, bits in (("ed25519", []), ("rsa", ["-b", "2048"]), ("ecdsa", ["-b", "256"])):
        path = d / kind
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", f"me@{kind}", "-f", str(path)], check=True
        )
        printed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
        out[kind] = ((d / f"{kind}.pub").read_text().strip(), printed.stdout.split()[1])
    return out


def test_fingerprint_is_ssh_keygens(keys):
    for line, expected in keys.values():
        assert ssh_session.fingerprint(line) == expected


def test_fingerprint_with_authorized_keys_options(keys):
    line, expected = keys["ed25519"]
    assert ssh_session.fingerprint(f'restrict,from="10.0.0.0/8" {line}') == expected


def test_no_key_in_the_line():
    assert ssh_session.fingerprint("# a comment") is None
    assert ssh_session.fingerprint("ssh-ed25519 not-base64!") is None
    assert ssh_session.fingerprint("") is None


def test_expose_auth_info(keys):
    line, expected = keys["ed25519"]
    assert ssh_session.from_user_auth(f"publickey {line.rsplit(' ', 1)[0]}\n") == ("publickey", expected)
    assert ssh_session.from_user_auth("password\n") == ("password", None)
    assert ssh_session.from_user_auth("") is None


LOG = [
    "Accepted publickey for deploy from 10.0.0.9 port 5000 ssh2: ED25519 SHA256:old",
    "Accepted publickey for deploy from 10.0.0.2 port 40312 ssh2: ED25519 SHA256:first",
    "pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)",
    "Accepted publickey for root from 10.0.0.2 port 40312 ssh2: RSA SHA256:otheruser",
    "Accepted password for deploy from 10.0.0.3 port 6000 ssh2",
    "Accepted publickey for deploy from 10.0.0.2 port 40312 ssh2: ED25519 SHA256:newest",
]


def test_the_sessions_own_line_newest_first():
    assert ssh_session.from_log(LOG, "deploy", "10.0.0.2", "40312") == ("publickey", "SHA256:newest")
    assert ssh_session.from_log(LOG, "root", "10.0.0.2", "40312") == ("publickey", "SHA256:otheruser")
    assert ssh_session.from_log(LOG, "deploy", "10.0.0.3", "6000") == ("password", None)
    assert ssh_session.from_log(LOG, "deploy", "10.0.0.2", "1") is None


def test_ssh_connection():
    assert ssh_session.parse_connection("10.0.0.2 40312 10.0.0.1 22") == ("10.0.0.2", "40312")
    assert ssh_session.parse_connection("") is None
