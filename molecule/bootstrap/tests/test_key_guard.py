"""Lock-out guard, keys: a change of the deploy user's authorized keys run
over the deploy user's own SSH session must not remove the key that session
logged in with (issue 10, item 10). Runs Ansible over real SSH to the target."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from onebox_molecule import one_line, run_playbook

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = "/home/deploy/.ssh/authorized_keys"


@pytest.fixture(scope="module")
def ssh_vars(target_ip, tmp_path_factory):
    d = tmp_path_factory.mktemp("ssh")
    return {
        "ansible_connection": "ssh",
        "ansible_host": target_ip,
        "ansible_user": "deploy",
        "ansible_ssh_private_key_file": os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "id_ed25519"),
        "ansible_ssh_common_args": f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ControlPath={d}/%C",
    }


def key_pair(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    pub = (tmp_path / f"{name}.pub").read_text().strip()
    fp = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True).stdout
    return pub, fp.split()[1]


def session_key():
    pub = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "id_ed25519.pub")
    with open(pub) as f:
        line = f.read().strip()
    fp = subprocess.run(["ssh-keygen", "-lf", pub], check=True, capture_output=True, text=True).stdout
    return line, fp.split()[1]


def run_keys(ssh_vars, keys, fingerprint=""):
    extra = dict(ssh_vars, base_deploy_user_authorized_keys=keys, expected_fingerprint=fingerprint)
    return run_playbook(
        f"{SCENARIO}/deploy_keys.yml", "-l", "onebox-bootstrap-target", "-e", json.dumps(extra), timeout=300
    )


def test_a_key_list_without_the_sessions_key_is_refused(target, ssh_vars, tmp_path):
    new_pub = key_pair(tmp_path, "new-laptop")[0]
    mine = session_key()[1]
    before = target.check_output(f"sha256sum {KEYS}")
    res = run_keys(ssh_vars, [new_pub])
    out = one_line(res)
    assert res.returncode != 0, out[-2000:]
    assert "would remove the key this play logs in with" in out, out[-2000:]
    assert mine in out and "Nothing was changed" in out
    assert target.check_output(f"sha256sum {KEYS}") == before


def test_a_key_list_that_keeps_the_sessions_key_applies(target, ssh_vars, tmp_path):
    new_pub, _fp = key_pair(tmp_path, "new-laptop")
    mine_pub, mine = session_key()
    try:
        res = run_keys(ssh_vars, [mine_pub, new_pub], fingerprint=mine)
        assert res.returncode == 0, one_line(res)[-3000:]
        installed = target.check_output(f"cat {KEYS}")
        assert new_pub.split()[1] in installed and mine_pub.split()[1] in installed
        # sshd said which key: the journal lookup (second play) found it too.
        assert "The journal names the key the test logged in with" in res.stdout
    finally:
        target.check_output(f"printf '%s\\n' '{mine_pub}' > {KEYS}")
