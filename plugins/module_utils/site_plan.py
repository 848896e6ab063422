# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What site.yml turns on, decided once: the platform's switches with their
one table of defaults (safe by default: what the plan promises is on unless
the inventory turns it off), and the summary site.yml ends with, where each
thing that is off is a warning. Standard library only."""

from __future__ import annotations

TRUE = (True, "true", "True", "yes", "on", 1, "1")


def _bool(value):
    return value in TRUE


# site.yml's switches. A callable default is decided from the model and the
# inventory (VARIABLES): the database runs when an app of the model has one
# (the old single-app variables keep asking for it with onebox_database),
# off-site copies run once they have somewhere to go.
DEFAULTS = {
    "onebox_database": lambda apps, v: bool(
        not v.get("app_image") and any(a.get("database") or a.get("redis") for a in apps)
    ),
    "onebox_backups": True,
    "onebox_monitoring": True,
    "onebox_offsite": lambda apps, v: bool(v.get("offsite_repository")),
    # A release whose env file changed since it started (new credentials, a
    # changed setting) is started again with it, blue-green, by site.yml.
    "onebox_apply_env": True,
}


def plan(apps, variables):
    """{switch: bool} for site.yml: each switch as the inventory sets it, else
    its default from DEFAULTS."""
    variables = variables or {}
    out = {}
    for key, default in DEFAULTS.items():
        given = variables.get(key)
        if given is None or given == "":
            out[key] = default(apps, variables) if callable(default) else default
        else:
            out[key] = _bool(given)
    return out


def schedule_text(schedule):
    """The backup role's OnCalendar schedule in words, where it is a common one."""
    known = {"": "every 15 minutes", "*:0/15": "every 15 minutes", "hourly": "every hour", "daily": "every day"}
    return known.get(schedule or "", f"on the schedule {schedule}")


def public(apps):
    """What the summary needs of each app: no settings, no secrets."""
    return [{k: a.get(k) for k in ("name", "kind", "database", "redis")} for a in apps or []]


def summary(apps, switches, settings):
    """What is on and what is off, as (lines, warnings): one line each for
    backups, off-site copies, monitoring and its alert receiver, TLS and the
    HTTPS redirect, point-in-time recovery; a warning, saying how to turn it
    on, for each one that is off. SETTINGS: the effective values of the
    roles' variables (haproxy_https, haproxy_acme, haproxy_certificates,
    haproxy_redirect_https, monitoring_* receivers, postgres_pitr_enabled)."""
    lines, warnings = [], []

    def say(name, on, text, fix=""):
        lines.append(f"{name:<14} {'on ' if on else 'OFF'}  {text}")
        if not on:
            warnings.append(f"{name} is off: {text}. {fix}".strip())

    # Databases, not apps: a web app and its workers share one (and one job).
    with_db = list(dict.fromkeys(a["database"] for a in apps if a.get("database")))
    if not with_db:
        lines.append(f"{'backups':<14} -    no app has a database")
    else:
        say(
            "backups",
            switches["onebox_backups"],
            f"{', '.join(with_db)}: {schedule_text(settings.get('backup_schedule'))}, verified, kept by age"
            if switches["onebox_backups"]
            else f"no scheduled backup of {', '.join(with_db)}",
            "Remove onebox_backups: false from the inventory and run site.yml again.",
        )
    if with_db:
        pitr = _bool(settings.get("postgres_pitr_enabled"))
        lines.append(
            f"{'point in time':<14} {'on ' if pitr else 'off'}  "
            + (
                "WAL archived with pgBackRest: a restore to any second"
                if pitr
                else "no WAL archiving: a restore goes back to the last dump (postgres_pitr_enabled)"
            )
        )
    say(
        "off-site",
        switches["onebox_offsite"],
        "encrypted copies of the dumps, volumes, Redis and configs leave the server; "
        "the server cannot delete them, so retention is playbooks/offsite-prune.yml (schedule it: "
        "OffsiteRetentionOverdue fires after offsite_retention_max_age_seconds without it)"
        if switches["onebox_offsite"]
        else "every copy of the data is on this server and is lost with it",
        "Set onebox_offsite and the offsite_* settings (README, 'Lose the server, lose nothing').",
    )
    say(
        "monitoring",
        switches["onebox_monitoring"],
        "Prometheus, Alertmanager, the alert rules" if switches["onebox_monitoring"] else "no metrics and no alerts",
        "Remove onebox_monitoring: false from the inventory.",
    )
    if switches["onebox_monitoring"]:
        receivers = [
            name
            for name, on in (
                ("e-mail", settings.get("monitoring_alert_email_to") and settings.get("monitoring_smtp_smarthost")),
                ("Slack", settings.get("monitoring_slack_webhook_url")),
                ("webhooks", settings.get("monitoring_alert_webhooks")),
            )
            if on
        ]
        say(
            "alerts",
            bool(receivers),
            f"sent by {', '.join(receivers)}" if receivers else "alerts fire but reach nobody",
            "Set monitoring_alert_email_to with monitoring_smtp_smarthost, or monitoring_slack_webhook_url.",
        )
    web = [a for a in apps if a.get("kind", "web") == "web"]
    https = _bool(settings.get("haproxy_https", True))
    real = _bool(settings.get("haproxy_acme")) or bool(settings.get("haproxy_certificates"))
    if web:
        say(
            "TLS",
            https and real,
            ("certificates from ACME" if _bool(settings.get("haproxy_acme")) else "your certificates")
            if https and real
            else ("self-signed certificates only: browsers warn" if https else "no HTTPS at all"),
            "Set haproxy_acme: true (Let's Encrypt) or haproxy_certificates.",
        )
        redirect = https and _bool(settings.get("haproxy_redirect_https"))
        say(
            "redirect",
            redirect,
            "plain HTTP answers 301 to HTTPS" if redirect else "plain HTTP is served as it is",
            "It follows real certificates (haproxy_acme or haproxy_certificates); haproxy_redirect_https: true "
            "forces it.",
        )
    return lines, warnings
