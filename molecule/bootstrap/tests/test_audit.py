"""Judged by tools nobody here wrote (issue: day-one failures, item 11):
ssh-audit's built-in "Hardened Debian 12 (version 3)" policy against the
bootstrapped Debian 12 server. (lynis judges the whole server after site.yml
in the platform scenario: molecule/platform/tests/test_60_lynis.py.)

No Ubuntu image can be built on these machines (debootstrap here reaches
Debian's archive only), so the Ubuntu 22.04 / 24.04 policies, which ask for
the same algorithms, host keys and moduli, are not run against a server:
test_ubuntu_policies_ask_for_what_the_role_sets compares them with the
role's defaults instead."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from onebox_molecule import PROJECT
from ssh_audit.builtin_policies import BUILTIN_POLICIES

RESULTS = os.path.join(PROJECT, "tests", "output", "audit.txt")
DEBIAN_12 = "Hardened Debian 12 (version 3)"


@pytest.fixture(scope="module")
def auditor_ip(target):
    """This machine's address as the target sees it, exempted (in the test,
    not in the defaults) from UFW's SSH rate limit and from fail2ban: an
    audit makes more connections than a person does."""
    gateway = subprocess.run(
        ["docker", "network", "inspect", "onebox-bootstrap", "-f", "{{(index .IPAM.Config 0).Gateway}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target.check_output(f"ufw insert 1 allow from {gateway} to any port 22 proto tcp")
    target.check_output(f"fail2ban-client set sshd addignoreip {gateway}")
    yield gateway
    target.run(f"ufw delete allow from {gateway} to any port 22 proto tcp")
    target.run(f"fail2ban-client set sshd delignoreip {gateway}")


def record(text):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(text + "\n")


def test_ssh_audit_hardened_debian_12_policy_passes(target, target_ip, auditor_ip):
    proc = subprocess.run(
        ["ssh-audit", "-n", "-P", DEBIAN_12, target_ip], capture_output=True, text=True, check=False, timeout=300
    )
    out = proc.stdout + proc.stderr
    record(f"ssh-audit {DEBIAN_12}: exit {proc.returncode}\n{out}")
    print(out)
    assert proc.returncode == 0 and "Passed" in out, out


def test_ubuntu_policies_ask_for_what_the_role_sets():
    with open(os.path.join(PROJECT, "roles", "ssh_hardening", "defaults", "main.yml")) as fh:
        defaults = yaml.safe_load(fh)
    for name in ("Hardened Ubuntu Server 22.04 LTS (version 6)", "Hardened Ubuntu Server 24.04 LTS (version 2)"):
        policy = BUILTIN_POLICIES[name]
        assert set(defaults["ssh_hardening_ciphers"]) == set(policy["ciphers"]), name
        assert set(defaults["ssh_hardening_macs"]) == set(policy["macs"]), name
        # Everything the policy asks for is offered; the one extra name is
        # left out by the role where sshd does not know it (OpenSSH < 9.9).
        asked = set(policy["kex"]) - {"kex-strict-s-v00@openssh.com", "ext-info-s"}
        assert asked <= set(defaults["ssh_hardening_kex"]), name
        assert set(defaults["ssh_hardening_kex"]) - set(policy["kex"]) <= {"sntrup761x25519-sha512"}, name
        assert set(defaults["ssh_hardening_host_key_algorithms"]) == set(policy["host_keys"]), name
        assert defaults["ssh_hardening_rsa_host_key_bits"] >= policy["hostkey_sizes"]["rsa-sha2-512"]["hostkey_size"]
        assert (
            defaults["ssh_hardening_moduli_min_bits"]
            >= policy["dh_modulus_sizes"]["diffie-hellman-group-exchange-sha256"]
        )
