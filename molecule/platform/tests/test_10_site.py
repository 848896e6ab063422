"""What a site.yml run with the shipped production inventory turns on
(issue 23, item 2): every line of its summary on, no warning that something
is off; certificates from the ACME CA for every domain, HTTP redirected to
HTTPS but for the ACME challenges; backups every 15 minutes of every app
database; monitoring with its alert receivers."""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import subprocess

from conftest import TARGET

LOG = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "site.log")
DOMAINS = ("shop.example.com", "www.shop.example.com", "blog.example.com", "example.com", "www.example.com")


def converge_summary():
    """The summary lines of the last site.yml run Molecule logged (the
    idempotence run), and the warnings of every run."""
    with open(LOG, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    runs = text.split("TASK [Say what is on and what is off]")
    assert len(runs) >= 3, "site.yml's summary is missing from the converge and idempotence logs"
    last = runs[-1].split("PLAY RECAP")[0]
    names = "backups|point in time|off-site|monitoring|alerts|TLS|redirect"
    # The log holds the task's result as the callback printed it (JSON here).
    lines = re.findall(rf"""["'-] ?((?:{names})\s+(?:on|OFF|off|-)\s[^"'\n]*)""", last)
    warnings = re.findall(r"\[WARNING\]: (\S+ is off: .*)", text)
    return lines, warnings


def test_the_production_inventory_turns_everything_on():
    lines, warnings = converge_summary()
    print("\n".join(lines))
    by_name = {re.split(r"\s{2,}", line)[0]: line for line in lines}
    assert set(by_name) == {"backups", "point in time", "off-site", "monitoring", "alerts", "TLS", "redirect"}, lines
    for name, line in by_name.items():
        assert re.match(rf"{re.escape(name)}\s+on\s", line), f"{name} is not on: {line}"
    assert "shop, blog: every 15 minutes" in by_name["backups"], by_name["backups"]
    assert "e-mail, Slack" in by_name["alerts"]
    assert "ACME" in by_name["TLS"]
    assert warnings == [], warnings


def test_the_off_site_copies_refuse_a_deletion_from_the_server():
    """The storage host as the README sets it up: site.yml asked the copies
    (onebox-dr probe) and neither the restic endpoint nor the WAL mirror let
    the server's credentials delete."""
    with open(LOG, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    assert "TASK [onebox.platform.offsite : Ask the copies whether they refuse a deletion from this server]" in text
    probe = r"WARNING: (?:the restic endpoint|the keys of|the WAL mirror|onebox-dr probe could not)[^\n]*"
    warned = re.findall(probe, text)
    assert warned == [], warned


def test_every_domain_has_a_certificate_from_the_acme_ca(target, base_url):
    # Pebble's root changes at every start: read it from its management port.
    root = target.check_output("curl -sk https://127.0.0.1:15000/roots/0")
    ctx = ssl.create_default_context(cadata=root)
    ip = base_url.split("//")[1]
    for domain in DOMAINS:
        with socket.create_connection((ip, 443), timeout=5) as sock, ctx.wrap_socket(
            sock, server_hostname=domain
        ) as tls:
            names = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]
        assert domain in names, (domain, names)


def test_plain_http_is_redirected_but_acme_challenges_are_not(http_url):
    ip = http_url.split("//")[1]
    for domain in DOMAINS:
        conn = http.client.HTTPConnection(ip, 80, timeout=5)
        conn.request("GET", "/health?x=1", headers={"Host": domain})
        resp = conn.getresponse()
        assert resp.status == 301 and resp.getheader("Location") == f"https://{domain}/health?x=1", (
            domain,
            resp.status,
        )
        conn.close()
    conn = http.client.HTTPConnection(ip, 80, timeout=5)
    conn.request("GET", "/.well-known/acme-challenge/nothing-here", headers={"Host": DOMAINS[0]})
    assert conn.getresponse().status != 301
    conn.close()


def test_backups_run_every_15_minutes_for_each_app_database(target):
    for job in ("shop", "blog"):
        timer = target.check_output(f"systemctl cat onebox-backup@{job}.timer")
        assert "OnCalendar=*:0/15" in timer
        assert target.service(f"onebox-backup@{job}.timer").is_enabled


def test_monitoring_runs_with_its_alert_receivers(target):
    for unit in ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter"):
        assert target.service(unit).is_running, unit
    config = target.check_output("cat /etc/prometheus/alertmanager.yml")
    assert "smtp.example.com:587" in config and "hooks.slack" not in config and "9099/slack" in config
    # The server trusts the mail server's certificate (the company CA): the
    # notices' STARTTLS is verified against the system's CAs, not skipped.
    out = subprocess.run(
        ["docker", "exec", TARGET, "python3", "-c",
         "import smtplib, ssl; s = smtplib.SMTP('smtp.example.com', 587, timeout=5); "
         "s.starttls(context=ssl.create_default_context()); print('verified'); s.quit()"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "verified" in out.stdout, out.stderr
    # postgres_exporter reads the database as its own role (pg_monitor): the
    # superuser may not log in over the network.
    metrics = target.check_output("curl -fsS http://127.0.0.1:9187/metrics")
    assert re.search(r"^pg_up 1(\.0)?$", metrics, re.M), [m for m in metrics.splitlines() if m.startswith("pg_up")]
    assert "onebox_monitor" in target.check_output(
        "grep ^DATA_SOURCE_USER= /etc/onebox/monitoring/postgres-exporter.env"
    )
