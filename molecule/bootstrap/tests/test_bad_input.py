"""Bad input fails early, says what to do, and changes nothing on the server."""

import json
import os

import pytest
from onebox_molecule import run_playbook

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = "sha256sum /etc/ssh/sshd_config /etc/ufw/after.rules /etc/ufw/user.rules /etc/docker/daemon.json; ufw status"


def run_role(role, extra_vars):
    return run_playbook(
        f"{SCENARIO}/role_alone.yml", "-e", json.dumps(dict(extra_vars, role_under_test=role)), timeout=600
    )


CASES = [
    ("base", {"onebox_ssh_port": 70000}, "port number from 1 to 65535"),
    ("ssh_hardening", {"ssh_hardening_port": 0}, "port number from 1 to 65535"),
    ("ssh_hardening", {"ssh_hardening_port": "ssh"}, "port number from 1 to 65535"),
    ("firewall", {"firewall_ssh_port": 65536}, "every port must be a number from 1 to 65535"),
    ("firewall", {"firewall_allowed_tcp_ports": [80, "http"]}, "every port must be a number from 1 to 65535"),
    ("firewall", {"firewall_allow_ssh": False, "firewall_allowed_tcp_ports": []}, "nobody could log in again"),
    ("ssh_hardening", {"ssh_hardening_key_users": ["keyless"]}, "'keyless' has no authorized key"),
    (
        "ssh_hardening",
        {"ssh_hardening_key_users": ["ghost"]},
        "'ghost' is listed in ssh_hardening_key_users but does not exist",
    ),
    ("docker", {"docker_install_source": "snap"}, "docker_install_source must be one of: docker, distro"),
    (
        "ssh_hardening",
        {"ssh_hardening_allow_users": ["alice"], "ssh_hardening_key_users": ["deploy"]},
        "ssh_hardening_allow_users (alice) does not list 'deploy'",
    ),
    (
        "ssh_hardening",
        {"ssh_hardening_allow_groups": ["wheel"], "ssh_hardening_key_users": ["deploy"]},
        "'deploy' is in none of ssh_hardening_allow_groups",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def keyless_user(target):
    target.check_output("id keyless || useradd -m keyless")
    yield
    target.run("userdel -r keyless")


@pytest.mark.parametrize("role,extra_vars,message", CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in CASES])
def test_bad_input_fails_early_and_changes_nothing(target, role, extra_vars, message):
    before = target.check_output(WATCHED)
    res = run_role(role, extra_vars)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-2000:]
    assert message in out, out[-2000:]
    assert "Nothing was changed" in out or "must be one of" in out
    assert "changed=0" in out, out[-2000:]
    assert target.check_output(WATCHED) == before


@pytest.mark.parametrize(
    "playbook,message",
    [
        # What to run, and when backups are off (onebox_backups: false).
        ("backup.yml", "Backups are not set up for app on onebox-bootstrap-target"),
        # This inventory's model has no app with a database to restore into.
        ("restore.yml", "No app of this inventory has a database"),
    ],
)
def test_backup_playbooks_on_a_server_without_backups_say_how(playbook, message):
    """Before: a raw "No such file or directory" for /usr/local/bin/onebox-pg-backup."""
    res = run_playbook(playbook, "-l", "onebox-bootstrap-target", timeout=300)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-2000:]
    assert message in out and "Nothing was changed." in out, out[-2000:]
    if playbook == "backup.yml":
        assert "run playbooks/site.yml" in out and "onebox_backups" in out, out[-2000:]
    assert "No such file or directory" not in out
