#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: site_summary
short_description: Say what site.yml turned on and what is off, each thing that is off a warning
version_added: "0.5.0"
description:
  - One line each for backups, point-in-time recovery, off-site copies, monitoring and its alert receiver, TLS and
    the HTTPS redirect; a warning, saying how to turn it on, for each one that is off.
  - An action plugin, run on the controller; it changes nothing.
author:
  - onebox.platform developers (@onebox)
options:
  apps:
    description: The checked app model (only names, kinds, databases and Redis are read).
    type: list
    elements: dict
    required: true
  switches:
    description: site.yml's switches (the M(onebox.platform.platform_plan) filter's result).
    type: dict
    required: true
  settings:
    description:
      - The effective values of the roles' settings it reports on (backup_schedule, postgres_pitr_enabled,
        haproxy_https, haproxy_acme, haproxy_certificates, haproxy_redirect_https), and whether the alert receivers
        monitoring_alert_email_to, monitoring_smtp_smarthost, monitoring_slack_webhook_url and
        monitoring_alert_webhooks are set.
    type: dict
    default: {}
extends_documentation_fragment:
  - onebox.platform.attributes
attributes:
  action:
    description: Runs on the controller.
    support: full
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Say what is on and what is off
  onebox.platform.site_summary:
    apps: "{{ app_model }}"
    switches: "{{ app_plan }}"
    settings:
      haproxy_acme: "{{ haproxy_acme }}"
"""

RETURN = r"""
msg:
  description: One line per thing, on or off.
  returned: always
  type: list
  elements: str
warnings:
  description: What is off, each with how to turn it on.
  returned: when something is off
  type: list
  elements: str
"""
