"""The base role's hardening (issue 23, item 8) does what it says on the
bootstrapped server: what lynis, in the platform scenario, only sees as a
file or a package in place. Run on the target itself (`su -` for a login
shell of the deploy user): the client's SSH connections are counted by UFW's
rate limit, which test_bootstrap.py uses up."""

from __future__ import annotations

import re

PROBE = "/etc/onebox-aide-probe"


def test_pending_security_updates_were_applied(target):
    """The run installed what the first daily unattended upgrade would have:
    nothing from the security archive is left to upgrade."""
    upgradable = target.check_output("apt list --upgradable 2>/dev/null")
    assert not re.search(r"-security\b", upgradable), upgradable


def test_login_shells_time_out_and_dump_no_core(target):
    """A login shell of the deploy user: idle shells log out (TMOUT, which
    the shell cannot unset), no core dumps."""
    res = target.run("su - deploy -s /bin/bash -c 'echo tmout=$TMOUT core=$(ulimit -c); TMOUT=0'")
    assert "tmout=900 core=0" in res.stdout, res.stdout + res.stderr
    assert res.rc != 0 and "TMOUT: readonly variable" in res.stderr, res.stderr


def test_only_root_runs_the_assembler(target):
    """binutils (with Docker's needrestart) brings an assembler; the role
    registered its mode with dpkg, so upgrades keep it 0750 root."""
    triplet = target.check_output("python3 -c 'import sysconfig; print(sysconfig.get_config_var(\"MULTIARCH\"))'")
    path = f"/usr/bin/{triplet}-as"
    assert target.check_output(f"dpkg-statoverride --list {path}") == f"root root 750 {path}"
    f = target.file(path)
    assert f.exists, path
    assert f.mode == 0o750
    res = target.run(f"su deploy -s /bin/sh -c '{path} --version'")
    assert res.rc != 0 and "Permission denied" in res.stderr, res.stdout + res.stderr


def test_aide_reports_a_new_system_file_and_nothing_the_play_installed(target):
    """AIDE's database was made at the end of the play, after Docker was
    installed: a check lists a file added to /etc since, not Docker's."""
    target.check_output(f"echo probe > {PROBE}")
    try:
        res = target.run("aide --config=/etc/aide/aide.conf --check")
        # The exit code's bits: 1 added, 2 removed, 4 changed.
        assert res.rc & 1, res.stdout[-3000:] + res.stderr
        assert re.search(rf"^f\++: {re.escape(PROBE)}$", res.stdout, re.M), res.stdout[-3000:]
        assert "/usr/bin/dockerd" not in res.stdout, res.stdout[-3000:]
    finally:
        target.run(f"rm -f {PROBE}")


def test_kernel_settings_keep_docker_routing(target):
    """The kernel settings file hardens and keeps IP forwarding on (Docker);
    the container's /proc/sys is read-only, so the file is what is checked."""
    conf = target.file("/etc/sysctl.d/90-onebox-hardening.conf").content_string
    assert re.search(r"^net\.ipv4\.ip_forward = 1$", conf, re.M), conf
    assert re.search(r"^kernel\.kptr_restrict = 2$", conf, re.M), conf


def test_fail2ban_still_ignores_the_servers_own_addresses(target):
    """ignoreip moved to jail.local (the file packages never change); the
    sshd jail still reads it."""
    out = target.check_output("fail2ban-client get sshd ignoreip")
    assert "127.0.0.0/8" in out and "::1" in out, out
