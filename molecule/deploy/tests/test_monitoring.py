"""Monitoring on the deployed server (SPEC R28), after test_deploy.py.

Prometheus, Alertmanager, node_exporter and postgres_exporter run for real
(Debian's packages). Grafana, Loki, Alloy and cAdvisor cannot run on these
machines (no package, no pullable image): the role writes their files and
tests/unit/test_monitoring_config.py checks them for structure only.
Alerts go to a local receiver (molecule/shared/receiver.py) standing in for Slack,
a webhook and an SMTP server.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from conftest import TARGET
from onebox_molecule import PROJECT, record_json, start_receiver
from onebox_molecule import host as onebox_host

RESULTS = os.path.join(PROJECT, "tests", "output", "monitoring.json")
OUT = "/var/tmp/receiver"


@pytest.fixture(scope="module")
def target():
    host = onebox_host(TARGET)
    start_receiver(host, TARGET, fresh=True)
    return host


def api(target, path, port=9090):
    out = target.check_output(
        "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' %s",
        f"http://127.0.0.1:{port}{path}",
    )
    return json.loads(out)


def query(target, promql):
    return api(target, f"/api/v1/query?query={quote(promql)}")["data"]["result"]


def value(target, promql):
    """The first sample's value of PROMQL, or None when there is none."""
    result = query(target, promql)
    return result[0]["value"][1] if result else None


def deliveries(target):
    """[(file name, arrival time, text)] of everything the receiver got, oldest first."""
    listing = target.check_output(
        f"find {OUT} -maxdepth 1 -type f ! -name '*.tmp' -printf '%f %T@\\n' 2>/dev/null || true"
    )
    arrived = dict(line.split() for line in listing.splitlines())
    return [(n, float(arrived[n]), target.file(f"{OUT}/{n}").content_string) for n in sorted(arrived)]


def epoch(stamp):
    """Alertmanager's RFC 3339 time (nanoseconds, Z) as Unix time."""
    head, _sep, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")


def wait_for_delivery(target, alertname, since, started_after, timeout):
    """Wait until the webhook, the Slack stand-in and the mailbox each got a
    firing notification of ALERTNAME for an alert that started after
    STARTED_AFTER (Unix time). The webhook's JSON says when the alert
    started; Slack and e-mail go out in the same flush, so they count only
    when they arrive with or after that webhook (a late retry of an older
    notification does not). Returns seconds waited per channel."""
    t0 = time.monotonic()
    seen = {}
    while time.monotonic() - t0 < timeout:
        got = [(n, at, text) for n, at, text in deliveries(target) if n not in since and alertname in text]
        hooks = [
            at
            for n, at, text in got
            if n.endswith("-hook")
            and any(
                a["labels"]["alertname"] == alertname
                and a["status"] == "firing"
                and epoch(a["startsAt"]) >= started_after - 1
                for a in json.loads(text)["alerts"]
            )
        ]
        if hooks:
            seen.setdefault("webhook", time.monotonic() - t0)
            flush = min(hooks) - 2
            if any(n.endswith("-slack") and at >= flush and "FIRING" in text for n, at, text in got):
                seen.setdefault("slack", time.monotonic() - t0)
            if any(n.endswith("-mail") and at >= flush and "firing" in text.lower() for n, at, text in got):
                seen.setdefault("email", time.monotonic() - t0)
        if len(seen) == 3:
            return seen
        time.sleep(1)
    pytest.fail(f"{alertname} not delivered in {timeout} s (got {sorted(seen)}); receiver has {deliveries(target)}")


def record(key, value):
    record_json(RESULTS, key, value)


def test_every_target_is_up(target):
    # The deploy tests run just before this one and put the app in
    # maintenance and back: wait for scrapes taken after that.
    deadline = time.monotonic() + 90
    while True:
        targets = api(target, "/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        live = value(target, 'haproxy_backend_active_servers{proxy="app_demo"}')
        if (
            set(health) >= {"prometheus", "alertmanager", "node", "haproxy", "postgres"}
            and set(health.values()) == {"up"}
            and live == "1"
        ):
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}, app_demo active servers: {live}"
        time.sleep(3)
    assert value(target, "pg_up") == "1"
    backup = query(target, "onebox_backup_last_success_timestamp_seconds")
    assert backup and backup[0]["metric"]["backup"] == "demo" and backup[0]["metric"]["job"] == "node"
    rules = api(target, "/api/v1/rules")["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {
        "ServiceDown",
        "WorkerDown",
        "BackupStale",
        "DatabaseDown",
    }


def test_the_apps_health_reaches_prometheus(target):
    """`onebox metrics` (the app role's 30 s timer) through node_exporter's
    textfile collector: what WorkerDown alerts on for a worker."""
    assert target.service("onebox-metrics.timer").is_enabled
    deadline = time.monotonic() + 90
    while value(target, 'onebox_app_up{app="demo",kind="web",job="node"}') != "1":
        assert time.monotonic() < deadline, target.run("cat /var/lib/prometheus/node-exporter/onebox_apps.prom").stdout
        time.sleep(3)


def test_everything_listens_on_loopback_only(target):
    listening = target.check_output("ss -Hltn | awk '{print $4}'").split()
    for port in ("9090", "9093", "9100", "9187"):
        local = [a for a in listening if a.rsplit(":", 1)[1] == port]
        assert local == [f"127.0.0.1:{port}"], (port, local)
    assert not [a for a in listening if a.endswith(":9094")], "Alertmanager's cluster port is open"


def wait_quiet(target, alertname, proxy, settle=35, timeout=240):
    """Wait until ALERTNAME for PROXY has been neither pending nor firing, in
    Prometheus and in Alertmanager, with PROXY's backend up, for SETTLE
    seconds: more than the scenario's group_interval (30 s), so that the
    resolved notice of an earlier outage has gone out. Without it an outage
    just before (test_deploy freezes the live server; a health check that
    flaps after it) and this test's own fall into one flush, and Alertmanager
    takes the new alert (same labels) for the one it has already told: it
    sends nothing."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        now = time.monotonic()
        pending = query(target, f'ALERTS{{alertname="{alertname}",proxy="{proxy}"}}')
        held = [
            a
            for a in api(target, "/api/v2/alerts", port=9093)
            if a["labels"].get("alertname") == alertname and a["labels"].get("proxy") == proxy
        ]
        up = value(target, f'haproxy_backend_active_servers{{proxy="{proxy}"}}') == "1"
        if pending or held or not up:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= settle:
            return
        assert now < deadline, f"{alertname} for {proxy} never went quiet: {pending or held}, up: {up}"
        time.sleep(2)


def test_stopping_the_app_fires_service_down_and_it_is_delivered(target):
    wait_quiet(target, "ServiceDown", "app_demo")
    since = {n for n, _at, _t in deliveries(target)}
    running = target.check_output("docker ps -q --filter label=onebox_app=demo").split()
    assert running
    t0 = time.monotonic()
    stopped = time.time()
    target.check_output(f"docker stop -t 1 {' '.join(running)}")
    try:
        seen = wait_for_delivery(target, "ServiceDown", since, stopped, timeout=180)
    finally:
        target.check_output(f"docker start {' '.join(running)}")
    delay = time.monotonic() - t0
    record("app_stop_to_alert_delivery_s", round(delay, 1))
    print(f"app stopped -> ServiceDown delivered to webhook, Slack and e-mail in {delay:.1f} s: {seen}")
    # Back up: HAProxy sees the app again.
    deadline = time.monotonic() + 60
    while value(target, 'haproxy_backend_active_servers{proxy="app_demo"}') != "1":
        assert time.monotonic() < deadline, "the app did not come back"
        time.sleep(2)


def test_stopping_the_backup_timer_fires_backup_stale(target):
    since = {n for n, _at, _t in deliveries(target)}
    stopped = time.time()
    target.check_output("systemctl stop onebox-backup@demo.timer")
    t0 = time.monotonic()
    try:
        seen = wait_for_delivery(target, "BackupStale", since, stopped, timeout=240)
    finally:
        target.check_output("systemctl start onebox-backup@demo.timer")
    record("backup_timer_stop_to_alert_delivery_s", round(time.monotonic() - t0, 1))
    print(f"backup timer stopped -> BackupStale delivered in {time.monotonic() - t0:.1f} s: {seen}")
    text = next(t for n, _at, t in deliveries(target) if n not in since and n.endswith("-hook") and "BackupStale" in t)
    alert = next(a for a in json.loads(text)["alerts"] if a["labels"]["alertname"] == "BackupStale")
    assert alert["labels"]["backup"] == "demo" and alert["labels"]["severity"] == "critical"
