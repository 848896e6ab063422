"""ssh_key_guard: refuses a key list that leaves out the session's key; passes
when the key stays, when the play is not that user's SSH session, or when keys
are only added."""

from __future__ import annotations

import subprocess

from conftest import run_module


def make_key(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return (tmp_path / f"{name}.pub").read_text().strip()


def guard(**kw):
    args = dict(user="deploy", session_user="deploy", ssh_connection="10.0.0.2 40312 10.0.0.1 22")
    args.update(kw)
    return run_module("ssh_key_guard", args)


def auth(line):
    return "publickey " + " ".join(line.split()[:2])


def test_refuses_to_remove_the_sessions_key(tmp_path):
    mine, theirs = make_key(tmp_path, "mine"), make_key(tmp_path, "theirs")
    rc, res = guard(keys=[theirs], session_auth=auth(mine))
    assert rc == 1 and res["kept"] is False
    assert "would remove the key this play logs in with" in res["msg"]
    assert res["session_key"] in res["msg"] and "Nothing was changed" in res["msg"]
    assert res["source"] == "SSH_USER_AUTH"


def test_passes_when_the_key_stays(tmp_path):
    mine, theirs = make_key(tmp_path, "mine"), make_key(tmp_path, "theirs")
    rc, res = guard(keys=[theirs, "restrict " + mine], session_auth=auth(mine))
    assert rc == 0 and res["kept"] is True
    # Several keys in one item (the role joins its list with newlines).
    rc, res = guard(keys=[f"{theirs}\n{mine}"], session_auth=auth(mine))
    assert rc == 0 and res["kept"] is True


def test_passes_when_it_cannot_cut_the_session(tmp_path):
    theirs = make_key(tmp_path, "theirs")
    assert guard(keys=[theirs], ssh_connection="")[0] == 0
    assert guard(keys=[theirs], session_user="root")[0] == 0
    assert guard(keys=[theirs], exclusive=False)[0] == 0
    rc, res = guard(keys=[theirs], session_auth="password")
    assert rc == 0 and "password" in res["msg"]


def test_unknown_session_key_fails_unless_told_to_warn(tmp_path):
    theirs = make_key(tmp_path, "theirs")
    # No ExposeAuthInfo and (on this machine) no sshd line for this made-up session.
    rc, res = guard(keys=[theirs], ssh_connection="192.0.2.77 1 10.0.0.1 22", hint="(turn it off with X.)")
    assert rc == 1 and "Cannot tell which key" in res["msg"] and "(turn it off with X.)" in res["msg"]
    rc, res = guard(keys=[theirs], ssh_connection="192.0.2.77 1 10.0.0.1 22", unknown="warn")
    assert rc == 0 and res["warnings"]
