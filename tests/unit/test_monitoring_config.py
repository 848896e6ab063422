"""The monitoring role's files, rendered by the role itself (tasks_from
configs.yml on this machine) and checked with the real tools: promtool
(check config, check rules, and `test rules` for every alert) and amtool.

Grafana, Loki and Alloy have no package or pullable image here, so their
files are checked for structure only: YAML/JSON parse, data source uids,
every dashboard PromQL query parsed by promtool, listeners on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

RULES_TEST = os.path.join(ROOT, "tests", "monitoring", "rules_test.yml")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the role writes root-owned files (run as root, as CI does)")

PLAY = """
- name: Render the monitoring files
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write and check them
      ansible.builtin.include_role:
        name: onebox.platform.monitoring
        tasks_from: configs.yml
"""


def render(tmp_path, tasks_from="configs.yml", **overrides):
    vars_ = dict(
        monitoring_method="package",
        monitoring_apply=False,
        monitoring_render_only=["cadvisor", "grafana", "loki", "alloy"],
        monitoring_prometheus_dir=str(tmp_path / "prometheus"),
        monitoring_config_dir=str(tmp_path / "onebox"),
        monitoring_textfile_dir=str(tmp_path / "textfile"),
        monitoring_alert_email_to="ops@example.com",
        monitoring_smtp_smarthost="smtp.example.com:587",
        monitoring_smtp_username="alerts",
        monitoring_smtp_password="smtp-secret-123",
        monitoring_slack_webhook_url="https://hooks.slack.com/services/T000/B000/XXXX",
        monitoring_alert_webhooks=["http://127.0.0.1:9099/hook"],
        monitoring_postgres_enabled=True,
        monitoring_postgres_password="pg-secret-1234",
        ansible_python_interpreter=sys.executable,
        inventory_hostname="web1",
    )
    vars_.update(overrides)
    (tmp_path / "play.yml").write_text(PLAY.replace("configs.yml", tasks_from))
    (tmp_path / "vars.json").write_text(json.dumps(vars_))
    proc = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{tmp_path / 'vars.json'}",
            str(tmp_path / "play.yml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg")),
        check=False,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    rc, out = render(tmp)
    assert rc == 0, out[-3000:]
    return tmp


def promtool(*args):
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_every_alert_passes_its_promtool_unit_test(rendered, tmp_path):
    shutil.copy(rendered / "prometheus" / "rules" / "onebox.yml", tmp_path / "onebox.rules.yml")
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    rc, out = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert rc == 0, out
    assert "SUCCESS" in out


def test_every_r28_alert_is_defined_and_tested(rendered):
    rules = yaml.safe_load((rendered / "prometheus" / "rules" / "onebox.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    r28 = {"ServiceDown", "HighErrorRate", "SlowResponses", "HighCpu", "HighCpuWarning", "HighMemory"}
    r28 |= {"DiskAlmostFull", "DiskFillingUp", "DatabaseDown", "BackupStale"}
    assert r28 <= names
    with open(RULES_TEST) as fh:
        tests = yaml.safe_load(fh)
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert names == tested, f"alerts without a promtool test: {names - tested}"
    # Each one fires in some test (exp_alerts not empty), not only stays quiet.
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == names


def test_prometheus_config_is_valid_and_scrapes_every_part(rendered):
    path = rendered / "prometheus" / "prometheus.yml"
    rc, out = promtool("check", "config", str(path))
    assert rc == 0, out
    cfg = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in cfg["scrape_configs"]}
    assert jobs == {
        "prometheus": "127.0.0.1:9090",
        "alertmanager": "127.0.0.1:9093",
        "node": "127.0.0.1:9100",
        "haproxy": "127.0.0.1:8404",
        "postgres": "127.0.0.1:9187",
    }
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_alertmanager_routes_to_email_slack_and_webhooks(rendered):
    path = rendered / "prometheus" / "alertmanager.yml"
    rc = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, check=False)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    # It holds the SMTP password and webhook URLs: Alertmanager's user only.
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    cfg = yaml.safe_load(path.read_text())
    (receiver,) = cfg["receivers"]
    assert cfg["route"]["receiver"] == receiver["name"]
    assert receiver["email_configs"] == [{"to": "ops@example.com", "send_resolved": True}]
    assert cfg["global"]["smtp_smarthost"] == "smtp.example.com:587"
    assert cfg["global"]["smtp_auth_password"] == "smtp-secret-123"
    assert receiver["slack_configs"][0]["api_url"].startswith("https://hooks.slack.com/")
    assert receiver["webhook_configs"] == [{"url": "http://127.0.0.1:9099/hook", "send_resolved": True}]


def test_a_bad_threshold_is_refused_before_it_goes_live(rendered, tmp_path):
    shutil.copytree(rendered / "prometheus", tmp_path / "prometheus")
    live = (tmp_path / "prometheus" / "rules" / "onebox.yml").read_text()
    rc, out = render(tmp_path, monitoring_alert_service_down_for="two minutes")
    assert rc != 0 and "failed to validate" in out
    assert (tmp_path / "prometheus" / "rules" / "onebox.yml").read_text() == live


def test_grafana_needs_a_password_and_nothing_is_written_without_one(tmp_path):
    rc, out = render(tmp_path, tasks_from="main.yml", monitoring_render_only=["cadvisor", "loki", "alloy"])
    assert rc != 0 and "monitoring_grafana_admin_password" in out and "Nothing was changed" in out
    assert not (tmp_path / "prometheus").exists() and not (tmp_path / "onebox").exists()


def promql_queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if target["datasource"]["type"] == "prometheus":
                yield panel["title"], target["expr"]


def test_grafana_provisioning_structure(rendered, tmp_path):
    """Grafana cannot run here: structure only."""
    ds = yaml.safe_load((rendered / "onebox" / "grafana" / "datasources" / "onebox.yml").read_text())
    uids = {d["uid"]: d for d in ds["datasources"]}
    assert uids["onebox-prometheus"]["url"] == "http://127.0.0.1:9090" and uids["onebox-prometheus"]["isDefault"]
    assert uids["onebox-loki"]["url"] == "http://127.0.0.1:3100"
    prov = yaml.safe_load((rendered / "onebox" / "grafana" / "dashboards" / "onebox.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((rendered / "onebox" / "grafana" / "dashboard-files" / "onebox.json").read_text())
    titles = " | ".join(p["title"] for p in dash["panels"])
    for needed in ("Requests", "5xx", "p95", "Live colour", "Container CPU", "Container memory", "Disk", "Backup age"):
        assert needed in titles
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert all(t["datasource"]["uid"] in uids for t in panel["targets"])
    # Every PromQL query parses: promtool checks them as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, (_t, e) in enumerate(promql_queries(dash))],
            }
        ]
    }
    (tmp_path / "dash.rules.yml").write_text(yaml.safe_dump(rules))
    rc, out = promtool("check", "rules", str(tmp_path / "dash.rules.yml"))
    assert rc == 0, out
    assert len(rules["groups"][0]["rules"]) >= 10


def test_loki_and_alloy_structure(rendered):
    """Loki and Alloy cannot run here: structure only."""
    loki = yaml.safe_load((rendered / "onebox" / "loki" / "config.yaml").read_text())
    assert loki["auth_enabled"] is False
    assert loki["server"]["http_listen_address"] == "127.0.0.1" and loki["server"]["http_listen_port"] == 3100
    assert loki["schema_config"]["configs"][0]["schema"] == "v13"
    assert loki["compactor"]["retention_enabled"] is True
    alloy = (rendered / "onebox" / "alloy" / "config.alloy").read_text()
    assert alloy.count("{") == alloy.count("}")
    for block in ('discovery.docker "containers"', 'loki.source.docker "containers"', 'loki.write "local"'):
        assert block in alloy
    assert 'url = "http://127.0.0.1:3100/loki/api/v1/push"' in alloy
    assert "forward_to    = [loki.write.local.receiver]" in alloy
