"""module_utils/site_plan: site.yml's switches from one table of defaults
(safe by default) and the summary it ends with, each thing off a warning."""

from __future__ import annotations

from ansible_collections.onebox.platform.plugins.module_utils import site_plan

SHOP = {"name": "shop", "kind": "web", "database": "shop", "redis": True}
LANDING = {"name": "landing", "kind": "web", "database": "", "redis": False}
ALL_ON = {
    "backup_schedule": "",
    "postgres_pitr_enabled": True,
    "haproxy_https": True,
    "haproxy_acme": True,
    "haproxy_certificates": False,
    "haproxy_redirect_https": True,
    "monitoring_alert_email_to": True,
    "monitoring_smtp_smarthost": True,
    "monitoring_slack_webhook_url": True,
    "monitoring_alert_webhooks": False,
}


def test_backups_and_monitoring_are_on_unless_turned_off():
    plan = site_plan.plan([SHOP], {})
    assert plan == {
        "onebox_database": True,
        "onebox_backups": True,
        "onebox_monitoring": True,
        "onebox_offsite": False,
        "onebox_apply_env": True,
    }
    assert site_plan.plan([SHOP], {"onebox_backups": False, "onebox_monitoring": "false"})["onebox_backups"] is False
    assert site_plan.plan([SHOP], {"onebox_monitoring": "false"})["onebox_monitoring"] is False
    assert site_plan.plan([SHOP], {"offsite_repository": "sftp:u@h:/r"})["onebox_offsite"] is True
    # No app needs a database: none runs; the old single-app variables ask for it themselves.
    assert site_plan.plan([LANDING], {})["onebox_database"] is False
    assert site_plan.plan([SHOP], {"app_image": "r/shop"})["onebox_database"] is False
    assert site_plan.plan([SHOP], {"app_image": "r/shop", "onebox_database": True})["onebox_database"] is True


def test_the_summary_of_a_server_with_everything_on_has_no_warning():
    switches = site_plan.plan([SHOP, LANDING], {"offsite_repository": "sftp:u@h:/r"})
    lines, warnings = site_plan.summary([SHOP, LANDING], switches, ALL_ON)
    assert warnings == []
    names = [line.split("  ")[0].strip() for line in lines]
    assert names == ["backups", "point in time", "off-site", "monitoring", "alerts", "TLS", "redirect"]
    assert "shop: every 15 minutes" in lines[0] and "e-mail, Slack" in lines[4]


def test_each_thing_that_is_off_is_a_warning_saying_how_to_turn_it_on():
    switches = site_plan.plan([SHOP], {"onebox_backups": False, "onebox_monitoring": False})
    settings = dict(ALL_ON, haproxy_acme=False, haproxy_redirect_https=False, postgres_pitr_enabled=False)
    lines, warnings = site_plan.summary([SHOP], switches, settings)
    off = {w.split(" is off")[0] for w in warnings}
    assert off == {"backups", "off-site", "monitoring", "TLS", "redirect"}
    assert any("Remove onebox_backups: false" in w for w in warnings)
    assert any("haproxy_acme: true" in w for w in warnings)
    assert any(line.startswith("point in time  off") for line in lines)
    # Monitoring on but nobody to tell: the alerts line is the warning.
    switches = site_plan.plan([SHOP], {})
    quiet = dict(ALL_ON, monitoring_alert_email_to=False, monitoring_slack_webhook_url=False)
    _lines, warnings = site_plan.summary([SHOP], switches, quiet)
    assert any(w.startswith("alerts is off: alerts fire but reach nobody") for w in warnings)


def test_the_summary_takes_no_secret():
    app = dict(SHOP, secret_env={"TOKEN": "s3cret"}, database_password="pw-pw-pw-pw-pw", env={"A": "b"})
    assert site_plan.public([app]) == [SHOP]
    assert site_plan.schedule_text("*:0/5") == "on the schedule *:0/5"
