#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_wait
short_description: Wait until HTTP endpoints or a Docker container are healthy
version_added: "0.1.0"
description:
  - Polls one or more URLs until each has given O(successes) good answers in a row. A good answer
    has an expected status code and, when asked, a body matching O(body_regex) and a JSON field
    O(json_path) equal to O(json_value) (for example the version just deployed).
  - Or waits until Docker reports a container's HEALTHCHECK as C(healthy). A container that is not
    running, or has no HEALTHCHECK, fails at once with its exit code and last log lines.
  - On timeout it fails with the last status, body excerpt or error seen for each URL and the
    number of attempts, so a failed deploy says why.
  - Runs on the managed host (probe what the server sees, such as a container on a private port).
author:
  - onebox.platform developers (@onebox)
options:
  url:
    description: One URL or a list of URLs. Exactly one of O(url) and O(container) is required.
    type: list
    elements: str
  container:
    description: Name or ID of a Docker container whose HEALTHCHECK to wait on.
    type: str
  status_codes:
    description: Good status codes; each item a code (V(200)) or a range (V(200-299)).
    type: list
    elements: str
    default: ["200"]
  body_regex:
    description: A regular expression the body must match (Python C(re.search)).
    type: str
  json_path:
    description: Dotted path of a field in a JSON body (V(version), V(build.version), V(items.0.id)).
    type: str
  json_value:
    description: Value the O(json_path) field must have (compared as equal, or equal as text).
    type: raw
  host_header:
    description:
      - Host header to send. Apps that validate Host (Django ALLOWED_HOSTS, Rails hosts) answer 400
        to a request by IP without it.
    type: str
  headers:
    description: Other request headers.
    type: dict
  method:
    description: HTTP method.
    type: str
    default: GET
    choices: [GET, HEAD, POST]
  validate_certs:
    description: Verify TLS certificates. Turn off for self-signed certificates on localhost.
    type: bool
    default: true
  follow_redirects:
    description: Follow redirects (otherwise a 3xx is the answer).
    type: bool
    default: false
  successes:
    description: Good answers in a row needed, per URL (or healthy observations of the container).
    type: int
    default: 1
  max_failures:
    description:
      - Fail as soon as this many bad answers have been seen (0 means keep trying until O(deadline)).
      - V(1) with a large O(successes) makes a verification window that tolerates no error.
    type: int
    default: 0
  interval:
    description: Seconds between rounds of requests.
    type: float
    default: 1
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  deadline:
    description: Seconds the whole wait may take.
    type: float
    default: 60
  initial_delay:
    description: Seconds to wait before the first request.
    type: float
    default: 0
  docker_bin:
    description: The docker command, for O(container).
    type: str
    default: docker
notes:
  - Changes nothing; check mode runs the same probes (they are read-only).
extends_documentation_fragment:
  - onebox.platform.attributes.check_only
"""

EXAMPLES = r"""
- name: Wait for the new colour to report the version just deployed
  onebox.platform.health_wait:
    url: "http://127.0.0.1:{{ app_green_port }}/health"
    host_header: "{{ app_domain }}"
    json_path: version
    json_value: "{{ app_version }}"
    successes: 3
    interval: 0.5
    deadline: 90

- name: Verification window through the public endpoint, no error tolerated
  onebox.platform.health_wait:
    url: http://127.0.0.1/health
    host_header: shop.example.com
    json_path: version
    json_value: "{{ app_version }}"
    successes: 20
    interval: 0.5
    max_failures: 1
    deadline: 30

- name: Wait for the database container's HEALTHCHECK
  onebox.platform.health_wait:
    container: postgres
    deadline: 60

- name: Any 2xx from two endpoints, through HAProxy with a self-signed certificate
  onebox.platform.health_wait:
    url: [https://127.0.0.1/health, https://127.0.0.1/ready]
    status_codes: ["200-299"]
    validate_certs: false
"""

RETURN = r"""
attempts:
  description: Requests made (or container inspections).
  returned: always
  type: int
  sample: 4
elapsed:
  description: Seconds the wait took.
  returned: always
  type: float
  sample: 2.53
last:
  description: Last answer per URL (status, body excerpt, error, reason it was not good, ms).
  returned: with url
  type: dict
  sample:
    "http://127.0.0.1:8081/health": {ok: true, status: 200, body: '{"version": "v2"}', reason: null, ms: 1.2}
status:
  description: The container's health status.
  returned: with container
  type: str
  sample: healthy
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.health import (
    Expectation,
    HealthError,
    wait_container,
    wait_urls,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="list", elements="str"),
            container=dict(type="str"),
            status_codes=dict(type="list", elements="str", default=["200"]),
            body_regex=dict(type="str"),
            json_path=dict(type="str"),
            json_value=dict(type="raw"),
            host_header=dict(type="str"),
            headers=dict(type="dict"),
            method=dict(type="str", default="GET", choices=["GET", "HEAD", "POST"]),
            validate_certs=dict(type="bool", default=True),
            follow_redirects=dict(type="bool", default=False),
            successes=dict(type="int", default=1),
            max_failures=dict(type="int", default=0),
            interval=dict(type="float", default=1.0),
            timeout=dict(type="float", default=5.0),
            deadline=dict(type="float", default=60.0),
            initial_delay=dict(type="float", default=0.0),
            docker_bin=dict(type="str", default="docker"),
        ),
        required_one_of=[("url", "container")],
        mutually_exclusive=[("url", "container")],
        required_by={"json_value": "json_path"},
        supports_check_mode=True,
    )
    p = module.params
    if p["successes"] < 1:
        module.fail_json(msg=f"successes must be at least 1, got {p['successes']}")
    if p["max_failures"] < 0:
        module.fail_json(msg=f"max_failures must not be negative, got {p['max_failures']}")
    for key in ("interval", "timeout", "deadline", "initial_delay"):
        if p[key] < 0 or (key in ("timeout", "deadline") and p[key] == 0):
            module.fail_json(msg=f"{key} must be positive, got {p[key]}")
    try:
        if p["container"]:
            out = wait_container(
                p["container"],
                successes=p["successes"],
                interval=p["interval"],
                deadline=p["deadline"],
                initial_delay=p["initial_delay"],
                docker=p["docker_bin"],
            )
            module.exit_json(changed=False, **out)
        for url in p["url"]:
            if not url.startswith(("http://", "https://")):
                module.fail_json(msg=f"url '{url}' must start with http:// or https://")
        try:
            expect = Expectation(p["status_codes"], p["body_regex"], p["json_path"], p["json_value"])
        except ValueError as exc:  # bad status code or bad regex
            module.fail_json(msg=f"bad expectation: {exc}")
        headers = dict(p["headers"] or {})
        if p["host_header"]:
            headers["Host"] = p["host_header"]
        out = wait_urls(
            p["url"],
            expect,
            successes=p["successes"],
            interval=p["interval"],
            timeout=p["timeout"],
            deadline=p["deadline"],
            initial_delay=p["initial_delay"],
            headers=headers,
            validate_certs=p["validate_certs"],
            method=p["method"],
            follow_redirects=p["follow_redirects"],
            max_failures=p["max_failures"],
        )
        module.exit_json(changed=False, **out)
    except HealthError as exc:
        facts = exc.args[1] if len(exc.args) > 1 else {}
        module.fail_json(msg=f"health_wait: {exc.args[0]}", **facts)


if __name__ == "__main__":
    main()
