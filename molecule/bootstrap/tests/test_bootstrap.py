"""What a bootstrapped server must be: checked on the running containers."""

import re
import time

SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"
# UFW limits SSH to 6 new connections per 30 s per source: the successful
# logins share one multiplexed connection so the tests stay under it.
MUX = "-o ControlMaster=auto -o ControlPath=/tmp/mux-%r@%h -o ControlPersist=60"


def effective_sshd(target):
    out = target.check_output("sshd -T -C user=deploy,host=client,addr=10.0.0.2")
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_sshd_effective_config_is_hardened(target):
    cfg = effective_sshd(target)
    assert cfg["passwordauthentication"] == "no"
    assert cfg["permitrootlogin"] == "no"
    assert cfg["kbdinteractiveauthentication"] == "no"
    assert cfg["authenticationmethods"] == "publickey"
    assert cfg["maxauthtries"] == "3"
    assert cfg["logingracetime"] == "30"
    assert cfg["clientaliveinterval"] == "300"
    assert cfg["clientalivecountmax"] == "2"
    assert cfg["maxsessions"] == "2"
    assert cfg["x11forwarding"] == "no"
    assert cfg["allowagentforwarding"] == "no"
    assert cfg["loglevel"] == "VERBOSE"
    weak = re.compile(r"cbc|arcfour|3des|hmac-sha1|hmac-md5|group1-|group14-sha1|diffie-hellman-group-exchange-sha1")
    for key in ("ciphers", "macs", "kexalgorithms"):
        assert not weak.search(cfg[key]), f"{key}: {cfg[key]}"
    assert cfg["ciphers"].startswith("chacha20-poly1305@openssh.com")


def test_sshd_config_file_is_private(target):
    f = target.file("/etc/ssh/sshd_config")
    assert f.user == "root" and f.mode == 0o600


def test_key_login_succeeds(client):
    res = client.run(f"{SSH} {MUX} -i /root/id_ed25519 deploy@target id -un")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "deploy"


def test_deploy_user_has_passwordless_sudo(client):
    res = client.run(f"{SSH} {MUX} -i /root/id_ed25519 deploy@target sudo -n id -u")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "0"


def test_the_deploy_user_can_tunnel_to_a_local_port(target, client):
    """The README's `ssh -L 3000:127.0.0.1:3000 deploy@server` works for the
    deploy user (local forwarding only); forwarding stays off for others."""
    target.run("systemctl stop onebox-test-tunnel")
    target.check_output("systemd-run --unit onebox-test-tunnel python3 -m http.server --bind 127.0.0.1 18090")
    # systemd-run returns before the server listens (seconds on a busy machine).
    target.check_output(
        "for i in $(seq 100); do ss -Hltn 'sport = :18090' | grep -q . && exit 0; sleep 0.2; done; exit 1"
    )
    try:
        client.check_output(
            f"{SSH} {MUX} -i /root/id_ed25519 -O forward -L 127.0.0.1:19090:127.0.0.1:18090 deploy@target"
        )
        res = client.run("curl -s -o /dev/null -w '%{http_code}' --retry 5 --retry-all-errors http://127.0.0.1:19090/")
        assert res.stdout == "200", res.stdout + res.stderr
    finally:
        client.run(f"{SSH} {MUX} -O cancel -L 127.0.0.1:19090:127.0.0.1:18090 deploy@target")
        target.run("systemctl stop onebox-test-tunnel")
    assert effective_sshd(target)["allowtcpforwarding"] == "local"
    other = target.check_output("sshd -T -C user=nobody,host=client,addr=10.0.0.2")
    assert "allowtcpforwarding no" in other.splitlines()


def test_password_login_is_refused(client):
    res = client.run(
        f"{SSH} -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive deploy@target true"
    )
    assert res.rc == 255
    # The server offers no password method at all.
    assert "Permission denied (publickey)" in res.stderr


def test_root_login_is_refused_even_with_a_key(target, client):
    pub = target.check_output("cat /home/deploy/.ssh/authorized_keys")
    target.check_output(f"install -d -m 700 /root/.ssh && echo '{pub}' > /root/.ssh/authorized_keys")
    try:
        res = client.run(f"{SSH} -i /root/id_ed25519 root@target true")
        assert res.rc == 255
        assert "Permission denied" in res.stderr
    finally:
        target.run("rm -f /root/.ssh/authorized_keys")


def test_weak_cipher_is_refused(client):
    res = client.run(f"{SSH} -i /root/id_ed25519 -c aes128-cbc deploy@target true")
    assert res.rc == 255
    assert "no matching cipher" in res.stderr


def test_ufw_lists_only_the_allowed_ports(target):
    out = target.check_output("ufw status")
    assert "Status: active" in out
    rules = re.findall(r"^(\S+(?: \(v6\))?)\s+(ALLOW|LIMIT|DENY|REJECT)\s", out, re.M)
    assert sorted(set(rules)) == sorted(
        {
            ("22/tcp", "LIMIT"),
            ("22/tcp (v6)", "LIMIT"),
            ("80/tcp", "ALLOW"),
            ("80/tcp (v6)", "ALLOW"),
            ("443/tcp", "ALLOW"),
            ("443/tcp (v6)", "ALLOW"),
            ("8081/tcp", "ALLOW"),
            ("8081/tcp (v6)", "ALLOW"),
        }
    )
    verbose = target.check_output("ufw status verbose")
    assert "Default: deny (incoming), allow (outgoing)" in verbose


def test_docker_runs_a_container(target, busybox_image):
    res = target.run(f"docker run --rm {busybox_image} echo hello-from-nested-docker")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "hello-from-nested-docker"


def test_daemon_json_rotates_logs_and_live_restores(target):
    info = target.check_output("docker info --format '{{.LoggingDriver}} {{.LiveRestoreEnabled}} {{.Driver}}'")
    # overlay2, the engine's own choice as on a real server (daemon.json
    # names no driver; /var/lib/docker is a tmpfs here, which overlay2 takes).
    assert info.strip() == "json-file true overlay2"
    cfg = target.file("/etc/docker/daemon.json").content_string
    assert '"max-size": "10m"' in cfg and "storage-driver" not in cfg


def test_deploy_user_is_in_docker_group(target):
    assert "docker" in target.user("deploy").groups


def test_published_ports_do_not_bypass_ufw(target, client, target_ip, busybox_image):
    """A port published by a container but not allowed must be unreachable
    from another host; an allowed one must answer. Checked with real
    connections, not by reading rules (the DOCKER-USER jump can be missing)."""
    for name, port in (("web-allowed", 8081), ("web-blocked", 8082)):
        target.run(f"docker rm -f {name}")
        target.check_output(f"docker run -d --name {name} -p {port}:80 {busybox_image} httpd -f -p 80 -h /www")
    try:
        # Both answer from the target itself: the server really runs.
        for port in (8081, 8082):
            for _attempt in range(20):
                if target.run(f"curl -fsS -m 2 http://127.0.0.1:{port}/").rc == 0:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"nested container on {port} never answered locally")
        allowed = client.run(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{target_ip}:8081/")
        assert allowed.rc == 0 and allowed.stdout == "200", allowed.stderr
        blocked = client.run(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{target_ip}:8082/")
        assert blocked.rc != 0, "port 8082 is published but not allowed, yet it answered"
        assert blocked.rc == 28, f"expected a timeout (dropped), got curl rc {blocked.rc}: {blocked.stderr}"
        drops = target.check_output("iptables -L onebox-docker-guard -v -n -x | awk '$3 == \"DROP\" {print $1}'")
        assert int(drops.split()[0]) > 0
    finally:
        target.run("docker rm -f web-allowed web-blocked")


def test_unattended_security_upgrades(target):
    # The security archive is in APT's sources (the test image's own, as in
    # Debian's images; the role adds it where a minimal Debian has none).
    assert "bookworm-security" in target.check_output("apt-cache policy")
    dump = target.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert "-security" in target.file("/etc/apt/apt.conf.d/52onebox-unattended-upgrades").content_string
    assert target.package("unattended-upgrades").is_installed


def test_time_zone_and_locale(target):
    assert target.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert "LANG=en_US.UTF-8" in target.file("/etc/default/locale").content_string
    assert "en_US.utf8" in target.check_output("locale -a")


def test_ssh_is_rate_limited(client, target_ip):
    """The 7th new connection within 30 s from one source is rejected."""
    results = []
    for _attempt in range(8):
        res = client.run(f"{SSH} -o PubkeyAuthentication=no deploy@{target_ip} true")
        results.append("refused" if "Connection refused" in res.stderr else "reached")
    assert "refused" in results, results
    assert results.index("refused") <= 6, results


def test_fail2ban_sshd_jail_bans_a_guessing_client(target, client, target_ip):
    """A source that keeps failing is banned. The guesses come from a second
    address of the client: its first one has used up UFW's SSH rate limit in
    the tests above, and fail2ban never bans the target's own addresses."""
    status = target.run("fail2ban-client status sshd")
    assert status.rc == 0, status.stderr
    iface, cidr = client.check_output("ip -o -4 addr show scope global | awk '{print $2, $4; exit}'").split()
    prefix = cidr.split("/")[1]
    guesser = ".".join([*cidr.split("/")[0].split(".")[:3], "250"])
    client.run(f"ip addr add {guesser}/{prefix} dev {iface}")
    client.check_output("test -f /root/stranger || ssh-keygen -q -t ed25519 -N '' -f /root/stranger")
    try:
        banned = False
        for _attempt in range(10):
            client.run(f"{SSH} -b {guesser} -o IdentitiesOnly=yes -i /root/stranger deploy@{target_ip} true")
            time.sleep(0.5)
            if guesser in target.check_output("fail2ban-client status sshd"):
                banned = True
                break
        assert banned, target.check_output("fail2ban-client status sshd")
        refused = client.run(f"{SSH} -b {guesser} -i /root/stranger deploy@{target_ip} true")
        assert refused.rc == 255 and "Connection refused" in refused.stderr
    finally:
        target.run("fail2ban-client unban --all")
        client.run(f"ip addr del {guesser}/{prefix} dev {iface}")
