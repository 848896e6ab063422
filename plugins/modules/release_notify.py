#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_notify
short_description: Tell Slack-style webhooks and an e-mail address how a release went, with its figures
version_added: "0.4.0"
description:
  - Sends one message per outcome (deployed, rolled back, switched back and why, failed, lock refused) to every
    webhook in O(webhooks) (a JSON POST with C(text), as Slack, Mattermost and Rocket.Chat take it, and the whole
    event under C(onebox)) and, when O(email) names a server and recipients, by e-mail over SMTP.
  - The message carries the verification window's figures (requests, 5xx answers, p95 response time, and the
    previous release's p95) and each canary step's.
  - A notice that cannot be sent is a warning, never a failure, so it cannot change a deploy's outcome. Webhook URLs
    and the SMTP password are never returned or logged.
author:
  - onebox.platform developers (@onebox)
options:
  event:
    description:
      - What happened, as a dict with C(app), C(host), C(action) (V(deploy) or V(rollback)), C(outcome) (one of
        V(deployed), V(rolled-back), V(switched-back), V(failed), V(lock-refused)), C(version), C(previous_version),
        C(reason), C(warning) and C(verification) (the RV(onebox.platform.release_verify#module:figures) and
        baseline of release_verify).
    type: dict
    required: true
  webhooks:
    description: Webhook URLs (they are credentials; hidden from logs).
    type: list
    elements: str
    default: []
  email:
    description: The SMTP server and addresses; nothing is mailed without O(email.host) and O(email.to).
    type: dict
    suboptions:
      host:
        description: SMTP server.
        type: str
      port:
        description: SMTP port.
        type: int
        default: 587
      tls:
        description:
          - V(starttls) (port 587), V(ssl) (port 465) or V(none) (a relay on localhost).
          - With V(starttls) and V(ssl) the server's certificate and host name (O(email.host)) are verified, against
            the system's CAs or O(email.ca_file); a certificate that does not verify sends nothing and is a warning
            naming the server.
        type: str
        choices: [starttls, ssl, none]
        default: starttls
      ca_file:
        description:
          - A PEM file of CA certificates, on the host the module runs on, to verify the SMTP server's certificate
            with instead of the system's CAs (a private CA).
        type: path
      username:
        description: Login, if the server wants one.
        type: str
      password:
        description: Its password (keep it in Vault).
        type: str
      from_addr:
        description: Sender address.
        type: str
        default: onebox@localhost
      to:
        description: Recipients.
        type: list
        elements: str
        default: []
  timeout:
    description: Seconds each webhook may take (an e-mail gets twice as long).
    type: float
    default: 5
notes:
  - In check mode nothing is sent; the message is returned.
extends_documentation_fragment:
  - onebox.platform.attributes.check_only
"""

EXAMPLES = r"""
- name: Tell the team
  onebox.platform.release_notify:
    event:
      app: shop
      host: "{{ inventory_hostname }}"
      action: deploy
      outcome: switched-back
      version: v42
      previous_version: v41
      reason: 12 of 131 requests answered 5xx (9.2 %, over the 1 % limit)
      verification: "{{ verify_result }}"
    webhooks: ["{{ vault_slack_webhook }}"]
    email:
      host: smtp.example.com
      username: deploys@example.com
      password: "{{ vault_smtp_password }}"
      from_addr: deploys@example.com
      to: [ops@example.com]
"""

RETURN = r"""
subject:
  description: The e-mail subject (the message's first line).
  returned: always
  type: str
  sample: "[onebox] shop v42 was switched back on web1: traffic is on v41 again"
text:
  description: The message.
  returned: always
  type: str
sent:
  description: Where it went (V(webhook 1), V(e-mail)), without addresses.
  returned: always
  type: list
  elements: str
failed:
  description: Where it could not go, and why (no address or password in it).
  returned: always
  type: list
  elements: str
  sample: ["webhook 2: HTTP 404"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.notify import OUTCOMES, notify


def main():
    module = AnsibleModule(
        argument_spec=dict(
            event=dict(type="dict", required=True),
            webhooks=dict(type="list", elements="str", default=[], no_log=True),
            email=dict(
                type="dict",
                options=dict(
                    host=dict(type="str"),
                    port=dict(type="int", default=587),
                    tls=dict(type="str", default="starttls", choices=["starttls", "ssl", "none"]),
                    ca_file=dict(type="path"),
                    username=dict(type="str"),
                    password=dict(type="str", no_log=True),
                    from_addr=dict(type="str", default="onebox@localhost"),
                    to=dict(type="list", elements="str", default=[]),
                ),
            ),
            timeout=dict(type="float", default=5.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    event = dict(p["event"])
    if event.get("outcome") not in OUTCOMES:
        module.fail_json(
            msg=f"release_notify: event.outcome must be one of {', '.join(OUTCOMES)}, not {event.get('outcome')!r}"
        )
    webhooks = [u for u in p["webhooks"] if u]
    if module.check_mode:
        from ansible_collections.onebox.platform.plugins.module_utils.notify import compose

        subject, text = compose(event)
        module.exit_json(changed=False, subject=subject, text=text, sent=[], failed=[])
    out = notify(event, webhooks, p["email"], p["timeout"])
    for failure in out["failed"]:
        module.warn(f"notice not sent to {failure}")
    module.exit_json(changed=bool(out["sent"]), **out)


if __name__ == "__main__":
    main()
