"""An operator whose ssh-agent holds several keys is never locked out, while
password guessers, key scanners and port scanners still are (issue 23,
item 7): sshd's MaxAuthTries counts every key the agent offers that the
server does not know, and fail2ban (aggressive mode) bans on failures.

Each case runs from an address of its own on the client, with a fresh
fail2ban record. UFW's SSH rate limit (6 new connections in 30 s per
address, tested in test_bootstrap.py) is lifted for these addresses by the
test alone, so that the only judges are sshd and fail2ban; fail2ban's own
rules come before UFW's and still apply to them."""

from __future__ import annotations

import re
import time

import pytest

SSH = (
    "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"
    # Only what the agent holds: no key files from ~/.ssh, and no multiplexing
    # (each login is a connection of its own, authenticated again).
    " -o IdentityFile=none -o ControlMaster=no -o ControlPath=none"
)
RIGHT_KEY = "/root/id_ed25519"
LOGINS = 10
# Banning takes maxretry (5) failures; each refused connection below counts
# at least one, so this bounds the attempts.
MAX_ATTEMPTS = 8


def banned(target, address):
    out = target.check_output("fail2ban-client status sshd")
    listed = re.search(r"Banned IP list:\s*(.*)", out).group(1).split()
    return address in listed


def banned_soon(target, address, seconds=3):
    """Whether fail2ban bans ADDRESS, given the few seconds it takes to read
    the journal (bounded)."""
    deadline = time.monotonic() + seconds
    while not banned(target, address):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


F2B_LOG = "/var/log/fail2ban.log"


def log_size(target):
    return int(target.check_output(f"stat -c %s {F2B_LOG}"))


def failures_found(target, address, since):
    """How many failures of ADDRESS fail2ban found after byte SINCE of its log
    (its own count, per address: the jail's total also moves with failures
    of earlier tests it is still reading)."""
    out = target.check_output(f"tail -c +{since + 1} {F2B_LOG}")
    return len(re.findall(rf"\[sshd\] Found {re.escape(address)} ", out))


def probe(client, target_ip, source):
    """Connect, read sshd's banner, hang up before any key exchange (what a
    port scanner does): one failure for fail2ban. Returns the banner."""
    return client.run(
        f'python3 -c \'import socket; s = socket.create_connection(("{target_ip}", 22), 5, ("{source}", 0));'
        " print(s.recv(64).decode().strip()); s.close()'"
    )


@pytest.fixture
def source(request, target, client):
    """An extra address of the client (its last byte from the test's
    parameter), exempt from UFW's SSH limit only; unbanned and removed after."""
    last = request.param
    iface, cidr = client.check_output("ip -o -4 addr show scope global | awk '{print $2, $4; exit}'").split()
    prefix = cidr.split("/")[1]
    address = ".".join([*cidr.split("/")[0].split(".")[:3], str(last)])
    client.check_output(f"ip addr add {address}/{prefix} dev {iface}")
    target.check_output(f"ufw insert 1 allow from {address} to any port 22 proto tcp")
    target.run(f"fail2ban-client set sshd unbanip {address}")
    try:
        yield address
    finally:
        target.run(f"fail2ban-client set sshd unbanip {address}")
        target.run(f"ufw delete allow from {address} to any port 22 proto tcp")
        client.run(f"ip addr del {address}/{prefix} dev {iface}")


def agent_script(keys, command):
    """A client shell line: an agent holding KEYS (in that order), COMMAND
    run with it, the agent stopped."""
    adds = " && ".join(f"ssh-add -q {k}" for k in keys)
    return f"eval $(ssh-agent -s) >/dev/null && {adds} && ssh-add -l && {{ {command}; }}; ssh-agent -k >/dev/null"


def unknown_keys(client, count):
    paths = [f"/root/agent-unknown-{i}" for i in range(1, count + 1)]
    for path in paths:
        client.check_output(f"test -f {path} || ssh-keygen -q -t ed25519 -N '' -C unknown -f {path}")
    return paths


def assert_banned_even_for_the_right_key(client, target_ip, source):
    """Once banned, SOURCE cannot connect at all, not even with the deploy key."""
    refused = client.run(f"{SSH} -b {source} -i {RIGHT_KEY} -o IdentitiesOnly=yes deploy@{target_ip} true")
    assert refused.rc == 255 and "Connection refused" in refused.stderr, refused.stderr


def fingerprint(client, path):
    return client.check_output(f"ssh-keygen -lf {path}").split()[1]


@pytest.mark.parametrize("source", [241], indirect=True)
def test_an_agent_with_two_unknown_keys_before_the_right_one_logs_in_every_time(target, client, target_ip, source):
    """Two keys the server does not know, the right one last: ten logins in a
    row all succeed, and fail2ban counts not one failure for them."""
    keys = [*unknown_keys(client, 2), RIGHT_KEY]
    log_from = log_size(target)
    since = target.check_output("date -u '+%Y-%m-%d %H:%M:%S'")
    logins = "; ".join(
        f"echo '== login {i}'; {SSH} -v -b {source} deploy@{target_ip} id -un 2>&1" for i in range(1, LOGINS + 1)
    )
    res = client.run(agent_script(keys, logins))
    out = res.stdout + res.stderr
    # The agent offers its keys in the order they were added: the right one last.
    listed = re.findall(r"SHA256:\S+", out.split("== login 1")[0])
    assert listed == [fingerprint(client, k) for k in keys], out[:2000]
    sessions = out.split("== login ")[1:]
    assert len(sessions) == LOGINS, out[-3000:]
    for session in sessions:
        offered = re.findall(r"Offering public key: .*?(SHA256:\S+)", session)
        assert offered == listed, session[-2000:]
        assert "Authenticated to" in session and re.search(r"^deploy$", session, re.M), session[-2000:]
        assert "Too many authentication failures" not in session
    # sshd saw and refused both unknown keys on every login (the journal
    # may take a moment to have the last lines)...
    deadline = time.monotonic() + 15
    while True:
        journal = target.check_output(f"journalctl -u ssh --since '{since}' --no-pager -o cat")
        refused = re.findall(rf"Failed publickey for deploy from {re.escape(source)} ", journal)
        accepted = re.findall(rf"Accepted publickey for deploy from {re.escape(source)} ", journal)
        if (len(refused), len(accepted)) == (2 * LOGINS, LOGINS) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (len(refused), len(accepted)) == (2 * LOGINS, LOGINS), journal[-3000:]
    # ...and fail2ban, which reads the same journal, found none of it. It
    # reads in order: once a probe made after the logins (one failure) is
    # found, so is everything before it.
    # On a machine busy with other scenarios fail2ban has taken over 15 s to
    # read that far (twice in full runs): up to 60 s, no longer than it takes.
    assert probe(client, target_ip, source).stdout.startswith("SSH-2.0-")
    deadline = time.monotonic() + 60
    while failures_found(target, source, log_from) == 0 and time.monotonic() < deadline:
        time.sleep(0.25)
    found = target.check_output(f"tail -c +{log_from + 1} {F2B_LOG}")
    seen = target.check_output(
        f"journalctl -u ssh --since '{since}' --no-pager -o short-precise | grep -F '{source}' | tail -n 8"
    )
    assert failures_found(target, source, log_from) == 1, f"fail2ban after the logins:\n{found[-3000:]}\nsshd:\n{seen}"
    assert not banned(target, source)


@pytest.mark.parametrize("source", [242], indirect=True)
def test_an_agent_with_three_unknown_keys_first_is_refused_then_banned(target, client, target_ip, source):
    """MaxAuthTries still means something: a third unknown key before the
    right one ends the connection, and such connections get the address
    banned (a key scanner)."""
    keys = [*unknown_keys(client, 3), RIGHT_KEY]
    attempts = []
    for _attempt in range(MAX_ATTEMPTS):
        res = client.run(agent_script(keys, f"{SSH} -b {source} deploy@{target_ip} true"))
        attempts.append(res.stdout + res.stderr)
        if banned_soon(target, source, seconds=1):
            break
    assert "Too many authentication failures" in attempts[0], attempts[0]
    assert banned_soon(target, source), attempts[-1]
    assert_banned_even_for_the_right_key(client, target_ip, source)


@pytest.mark.parametrize("source", [243], indirect=True)
def test_password_guessing_is_refused_then_banned(target, client, target_ip, source):
    """A client that tries passwords (the server offers none) for a user that
    does not exist, as scanners do, is refused and then banned."""
    attempts = []
    for _attempt in range(MAX_ATTEMPTS):
        res = client.run(
            f"{SSH} -b {source} -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive"
            f" admin@{target_ip} true"
        )
        assert res.rc == 255, res.stdout
        attempts.append(res.stderr)
        if banned_soon(target, source, seconds=1):
            break
    assert "Permission denied (publickey)" in attempts[0], attempts[0]
    assert banned_soon(target, source), attempts[-1]
    assert_banned_even_for_the_right_key(client, target_ip, source)


@pytest.mark.parametrize("source", [244], indirect=True)
def test_a_port_scanner_is_banned(target, client, target_ip, source):
    """Connections that read sshd's banner and hang up before any key
    exchange (what port scanners and version probes do) are banned."""
    first = probe(client, target_ip, source)
    assert first.stdout.startswith("SSH-2.0-"), first.stdout + first.stderr
    for _attempt in range(MAX_ATTEMPTS - 1):
        if banned_soon(target, source, seconds=1):
            break
        probe(client, target_ip, source)
    assert banned_soon(target, source)
    assert_banned_even_for_the_right_key(client, target_ip, source)
