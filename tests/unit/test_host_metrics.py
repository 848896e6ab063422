"""What `onebox metrics` writes for the container and fail2ban alerts, and
the HTTPS URLs blackbox_exporter probes, from real command output shapes
(`docker container inspect`, `fail2ban-client status`)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import apps, live_state

INSPECT = [
    {"Name": "/shop-blue", "RestartCount": 0, "State": {"Running": True, "Health": {"Status": "healthy"}}},
    {
        "Name": "/shop-green",
        "RestartCount": 4,
        "State": {"Running": True, "Restarting": False, "Health": {"Status": "unhealthy"}},
    },
    {"Name": "/mailer-blue", "RestartCount": 7, "State": {"Running": False, "Restarting": True}},
    {"Name": "/old", "RestartCount": 0, "State": {"Running": False, "Health": {"Status": "unhealthy"}}},
]

F2B_OVERVIEW = """Status
|- Number of jail:\t2
`- Jail list:\tsshd, recidive
"""
F2B_SSHD = """Status for the jail: sshd
|- Filter
|  |- Currently failed:\t3
|  |- Total failed:\t120
|  `- File list:\t/var/log/auth.log
`- Actions
   |- Currently banned:\t2
   |- Total banned:\t41
   `- Banned IP list:\t192.0.2.1 192.0.2.2
"""


def sample(text, line_start):
    return [ln for ln in text.splitlines() if ln.startswith(line_start)]


def test_container_metrics():
    text = live_state.container_metrics(INSPECT)
    assert 'onebox_container_unhealthy{name="shop-green"} 1' in text
    assert 'onebox_container_unhealthy{name="shop-blue"} 0' in text
    # A stopped container is not "unhealthy" (the previous colour, kept for rollback).
    assert 'onebox_container_unhealthy{name="old"} 0' in text
    assert 'onebox_container_restarting{name="mailer-blue"} 1' in text
    assert 'onebox_container_restarts_total{name="mailer-blue"} 7' in text
    assert len(sample(text, "onebox_container_running{")) == 4
    assert "# TYPE onebox_container_restarts_total counter" in text


def test_fail2ban_metrics():
    assert live_state.fail2ban_jails(F2B_OVERVIEW) == ["sshd", "recidive"]
    text = live_state.fail2ban_metrics({"sshd": F2B_SSHD, "broken": "nothing useful"})
    assert 'onebox_fail2ban_banned{jail="sshd"} 2' in text
    assert 'onebox_fail2ban_banned_total{jail="sshd"} 41' in text
    assert "broken" not in text


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with scripts/test.sh setup")
def test_metrics_texts_parse_as_prometheus_exposition(tmp_path):
    for name, text in {
        "c.prom": live_state.container_metrics(INSPECT),
        "f.prom": live_state.fail2ban_metrics({"sshd": F2B_SSHD}),
    }.items():
        path = tmp_path / name
        path.write_text(text)
        with open(path) as fh:
            proc = subprocess.run(
                ["promtool", "check", "metrics"], stdin=fh, capture_output=True, text=True, check=False
            )
        # promtool lints names too; only parse errors matter here.
        assert "error while linting" not in proc.stderr and "parse" not in proc.stderr.lower(), proc.stderr


def test_tls_probe_targets_every_web_domain_on_its_health_path():
    model = [
        {"name": "shop", "kind": "web", "domains": ["shop.example.com", "www.shop.example.com"], "health_path": "/up"},
        {"name": "mailer", "kind": "worker"},
        {"name": "blog", "kind": "web", "domains": ["blog.example.com"], "health_path": "/health"},
    ]
    assert apps.tls_probe_targets(model) == [
        "https://shop.example.com/up",
        "https://www.shop.example.com/up",
        "https://blog.example.com/health",
    ]
    assert apps.tls_probe_targets(model[2:], 8443) == ["https://blog.example.com:8443/health"]
