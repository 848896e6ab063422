"""Certificates from an ACME CA, end to end (issue 13, item 1), and the
alerts on the server's own state: certificate expiry and renewal, unhealthy
and restarting containers, fail2ban's ban rate.

Pebble (Let's Encrypt's test CA, Debian's package) runs on the target, and
demo.test resolves there to HAProxy, so Pebble's HTTP-01 validation goes
through HAProxy's /.well-known/acme-challenge/ route to certbot, as Let's
Encrypt's would. The TLS client here trusts only Pebble's root (fetched from
its management API: it changes at every start) and checks the name. Runs
after test_deploy.py (file order): the demo app answers on demo.test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time

import pytest
from conftest import TARGET
from onebox_molecule import container_ip

HOST = "demo.test"
URL = f"https://{HOST}/health"


@pytest.fixture(scope="module")
def pebble_root(target, tmp_path_factory):
    pem = target.check_output(
        "python3 -c 'import ssl, urllib.request; "
        'print(urllib.request.urlopen("https://127.0.0.1:15000/roots/0", '
        'context=ssl.create_default_context(cafile="/etc/onebox-test-ca/ca.crt")).read().decode())\''
    )
    assert "BEGIN CERTIFICATE" in pem
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_text(pem + "\n")
    return str(path)


def tls_context(root):
    return ssl.create_default_context(cafile=root)


def served(root, name=HOST):
    """The certificate HAProxy serves for NAME, verified against Pebble's root."""
    raw = socket.create_connection((container_ip(TARGET), 443), timeout=5)
    with tls_context(root).wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert()


def https_get(root, conn=None):
    """GET /health on a kept-alive connection (a new one without CONN)."""
    if conn is None:
        conn = http.client.HTTPSConnection(container_ip(TARGET), 443, context=tls_context(root), timeout=5)
        conn.sock = tls_context(root).wrap_socket(
            socket.create_connection((container_ip(TARGET), 443), timeout=5), server_hostname=HOST
        )
    conn.request("GET", "/health", headers={"Host": HOST})
    resp = conn.getresponse()
    body = resp.read()
    return conn, resp.status, body


def metric(target, name):
    text = target.check_output("cat /var/lib/prometheus/node-exporter/onebox_acme.prom")
    return [ln for ln in text.splitlines() if ln.startswith(name)]


def prometheus(target, path):
    out = target.check_output(
        "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' %s",
        f"http://127.0.0.1:9090{path}",
    )
    return json.loads(out)["data"]


def firing(target, alertname, timeout, **labels):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for alert in prometheus(target, "/api/v1/alerts")["alerts"]:
            if (
                alert["labels"]["alertname"] == alertname
                and alert["state"] == "firing"
                and all(alert["labels"].get(k) == v for k, v in labels.items())
            ):
                return alert
        time.sleep(2)
    pytest.fail(f"{alertname} {labels} did not fire within {timeout} s")


@contextlib.contextmanager
def metrics_refreshed(target):
    """`onebox metrics` every 3 s (its timer: every 30 s) while Prometheus
    waits out an alert's delay."""
    stop = threading.Event()

    def refresh():
        while not stop.is_set():
            target.run("onebox metrics")
            time.sleep(3)

    worker = threading.Thread(target=refresh, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(10)


def renew(target, *args):
    return target.run("onebox-acme renew --force-renewal " + " ".join(args))


def test_the_domain_serves_a_certificate_from_the_acme_ca(target, pebble_root):
    cert = served(pebble_root)
    issuer = dict(x[0] for x in cert["issuer"])
    assert "Pebble" in issuer["commonName"], cert["issuer"]
    assert ("DNS", HOST) in cert["subjectAltName"]
    # The name is checked: the same certificate is refused for another name.
    with pytest.raises(ssl.SSLCertVerificationError):
        served(pebble_root, name="other.test")
    # certbot keeps it; the haproxy role's self-signed one is gone.
    assert target.file(f"/etc/letsencrypt/live/{HOST}/fullchain.pem").exists
    issued = target.check_output(f"openssl x509 -noout -issuer -in /etc/haproxy/certs/{HOST}.pem")
    assert "Pebble" in issued
    conn, status, body = https_get(pebble_root)
    conn.close()
    assert status == 200 and b"version" in body


def test_a_domain_that_does_not_resolve_keeps_its_self_signed_certificate(target):
    """A domain whose DNS does not point here yet: the CA cannot validate
    it, onebox-acme says so, and the self-signed certificate the haproxy
    role made stays in place (the next site.yml run tries again)."""
    pem = "/etc/haproxy/certs/nowhere.test.pem"
    target.check_output("cp /etc/onebox/acme.json /var/tmp/acme.json.saved")
    try:
        cfg = json.loads(target.check_output("cat /etc/onebox/acme.json"))
        cfg["domains"].append("nowhere.test")
        target.check_output("printf '%%s' %s > /etc/onebox/acme.json", json.dumps(cfg))
        target.check_output(
            "t=$(mktemp -d) && openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN=nowhere.test "
            f"-keyout $t/k -out $t/c 2>/dev/null && cat $t/c $t/k > {pem} && rm -rf $t"
        )
        before = target.check_output(f"sha256sum {pem}")
        t0 = time.monotonic()
        result = json.loads(target.check_output("onebox-acme issue"))
        seconds = round(time.monotonic() - t0, 1)
        assert result[HOST]["status"] == "present"
        assert result["nowhere.test"]["status"] == "failed" and result["nowhere.test"]["detail"], result
        assert target.check_output(f"sha256sum {pem}") == before
        assert not target.file("/etc/letsencrypt/live/nowhere.test").exists
        print(f"nowhere.test refused in {seconds} s: {result['nowhere.test']['detail'][:200]}")
    finally:
        target.check_output("mv /var/tmp/acme.json.saved /etc/onebox/acme.json")
        target.run(f"rm -f {pem}")


def test_the_challenge_path_goes_to_certbot_not_the_app(target, base_url):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base_url + "/.well-known/acme-challenge/nothing", headers={"Host": HOST})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    # certbot listens only while it answers a challenge: HAProxy says 503.
    assert err.value.code == 503
    cfg = target.check_output("cat /etc/haproxy/haproxy.cfg")
    assert "use_backend onebox-acme if onebox_acme" in cfg


def test_renewal_swaps_the_certificate_without_dropping_a_connection(target, pebble_root):
    before = served(pebble_root)
    held, status, _body = https_get(pebble_root)
    assert status == 200
    failures, done = [], threading.Event()
    count = [0]

    def new_connections():
        while not done.is_set():
            try:
                conn, st, _b = https_get(pebble_root)
                conn.close()
                count[0] += 1
                if st != 200:
                    failures.append(st)
            except (OSError, ssl.SSLError) as exc:
                failures.append(repr(exc))
            time.sleep(0.05)

    worker = threading.Thread(target=new_connections, daemon=True)
    worker.start()
    t0 = time.monotonic()
    result = renew(target)
    seconds = round(time.monotonic() - t0, 1)
    time.sleep(1)
    done.set()
    worker.join(10)
    assert result.rc == 0, result.stdout + result.stderr
    after = served(pebble_root)
    assert after["serialNumber"] != before["serialNumber"]
    # The connection opened before the renewal still works.
    for _i in range(3):
        _conn, status, _body = https_get(pebble_root, held)
        assert status == 200
    held.close()
    print(f"renewal: {seconds} s, {count[0]} HTTPS requests on new connections meanwhile, failed: {failures}")
    assert count[0] > 0 and not failures
    assert metric(target, "onebox_acme_renew_success") == ["onebox_acme_renew_success 1"]
    # HAProxy reloaded nothing: the renewal went over the Runtime API.
    assert "reloading HAProxy" not in result.stderr


def test_blackbox_reads_the_served_certificates_expiry(target, pebble_root):
    not_after = ssl.cert_time_to_seconds(served(pebble_root)["notAfter"])
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        rows = prometheus(target, f'/api/v1/query?query=probe_ssl_earliest_cert_expiry{{instance="{URL}"}}')["result"]
        seen = float(rows[0]["value"][1]) if rows else None
        if seen == not_after:
            break
        time.sleep(2)
    assert seen == not_after, f"blackbox reports {seen}, HAProxy serves a certificate valid until {not_after}"


def test_a_failed_renewal_keeps_the_certificate_and_alerts(target, pebble_root):
    before = served(pebble_root)
    target.check_output("systemctl stop pebble-test")
    try:
        result = renew(target)
        assert result.rc != 0
        assert "keeps serving" in result.stderr
        assert served(pebble_root)["serialNumber"] == before["serialNumber"]
        assert metric(target, "onebox_acme_renew_success") == ["onebox_acme_renew_success 0"]
        alert = firing(target, "CertificateRenewalFailed", 90)
        assert alert["labels"]["severity"] == "warning"
    finally:
        target.check_output("systemctl start pebble-test")
    # The timer's own path (certbot.timer -> certbot.service -> onebox-acme
    # renew), with nothing due: a success that clears the alert's metric.
    deadline = time.monotonic() + 30
    while target.run("ss -ltn | grep -q 127.0.0.1:14000").rc and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "onebox-acme renew" in target.check_output("systemctl cat certbot.service")
    assert target.run("systemctl is-enabled certbot.timer").stdout.strip() == "enabled"
    target.check_output("systemctl start certbot.service")
    assert metric(target, "onebox_acme_renew_success") == ["onebox_acme_renew_success 1"]
    assert served(pebble_root)["serialNumber"] == before["serialNumber"]


def test_an_unhealthy_and_a_restarting_container_alert(target):
    image = "registry.test:5000/onebox/demo:v1"
    target.run("docker rm -f onebox-test-sick onebox-test-crashy")
    target.check_output(
        f"docker run -d --name onebox-test-sick --health-cmd false --health-interval 1s --health-retries 1 {image}"
    )
    target.check_output(
        f"docker run -d --name onebox-test-crashy --restart always --entrypoint /bin/sh {image} -c 'exit 1'"
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            target.check_output("onebox metrics")
            text = target.check_output("cat /var/lib/prometheus/node-exporter/onebox_containers.prom")
            if 'onebox_container_unhealthy{name="onebox-test-sick"} 1' in text:
                break
            time.sleep(2)
        assert 'onebox_container_unhealthy{name="onebox-test-sick"} 1' in text
        assert 'onebox_container_unhealthy{name="demo-postgres"} 0' in text
        with metrics_refreshed(target):
            firing(target, "ContainerUnhealthy", 90, name="onebox-test-sick")
            alert = firing(target, "ContainerRestarting", 90, name="onebox-test-crashy")
            assert alert["labels"]["severity"] == "critical"
    finally:
        target.run("docker rm -f onebox-test-sick onebox-test-crashy")
        target.run("onebox metrics")


def test_fail2ban_banning_fast_alerts(target):
    # A sample before the bans, scraped (every 5 s here), for increase().
    target.check_output("onebox metrics")
    time.sleep(7)
    addresses = [f"192.0.2.{i}" for i in range(10, 35)]
    target.check_output("fail2ban-client set sshd banip " + " ".join(addresses))
    try:
        target.check_output("onebox metrics")
        text = target.check_output("cat /var/lib/prometheus/node-exporter/onebox_fail2ban.prom")
        banned = [ln for ln in text.splitlines() if ln.startswith('onebox_fail2ban_banned{jail="sshd"}')]
        assert banned and int(banned[0].split()[-1]) >= 25, text
        with metrics_refreshed(target):
            alert = firing(target, "Fail2banBanRateHigh", 90, jail="sshd")
        print(f"Fail2banBanRateHigh: {alert['annotations']['summary']}")
    finally:
        target.run("fail2ban-client set sshd unbanip " + " ".join(addresses))
        target.run("onebox metrics")
