#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_verify
short_description: Judge a web release on smoke checks and its real traffic, in canary steps or after the switch
version_added: "0.4.0"
description:
  - V(smoke) runs the app's smoke checks (paths with the status, body or JSON field each must answer) once against
    O(base_url), for example the new colour's private port before any traffic reaches it. Any failure fails the task.
  - V(canary) sends a share of the traffic to O(server) in O(steps) (percent, by HAProxy weights over the Runtime
    API, the rest to O(back_to)), holds each step O(hold) seconds and judges the new colour's real requests at
    each. A bad step sends all traffic back to O(back_to) at once and fails.
  - V(window) runs after the switch. It runs the smoke checks once through the public endpoint, then for O(seconds)
    probes O(probe_url) every O(interval) seconds and judges the new colour's real requests. On a bad verdict it
    switches all traffic to O(back_to) at once (when given) and fails with the figures.
  - Real requests come from HAProxy itself. The haproxy role logs each request to the in-memory ring C(onebox-traffic),
    and this module streams it over the Runtime API (C(show events onebox-traffic -w -n)). Requests to
    O(skip_paths) (the health path) are probes, not traffic.
  - The verdict. With fewer than O(min_requests) requests nothing is judged on traffic (said in RV(note)), and the
    probes decide. Otherwise the new colour is judged against the previous colour's last 3000 requests in the ring
    before the switch (the baseline), with the uncertainty of both samples. It is bad when its share of 5xx answers
    is over the baseline's by more than O(max_error_rate) (over O(max_error_rate) itself with no baseline), or when
    its p95 response time is over max(O(latency_factor) times the baseline's p95, that p95 plus O(latency_floor_ms)),
    each p95 taken at its confidence bound (order statistics), so two slow requests among twenty do not decide.
    While the window or a canary step lasts only overwhelming evidence decides (a release answering a fifth 5xx is
    switched back within its first requests); at its end the whole sample is judged once more at 95 % confidence.
author:
  - onebox.platform developers (@onebox)
options:
  phase:
    description: What to do.
    type: str
    choices: [smoke, canary, window]
    required: true
  socket:
    description: HAProxy's admin socket (canary, window).
    type: str
    default: /run/haproxy/admin.sock
  backend:
    description: The app's HAProxy backend (canary, window).
    type: str
  server:
    description: The new colour's server in O(backend) (canary, window).
    type: str
  back_to:
    description:
      - The previous colour. Canary steps share traffic with it, and a bad verdict sends all traffic back to it.
      - In O(phase=window), leave it out to only fail, for example when the database was restored for the new
        release and the old code must not serve it.
    type: str
  baseline_server:
    description: Whose recent requests set the latency bound (defaults to O(back_to)); none, no latency gate.
    type: str
  ring:
    description: The HAProxy ring that holds the request log.
    type: str
    default: onebox-traffic
  checks:
    description:
      - Smoke checks, each a path or a dict with C(path), C(status) (a code, a range V(200-299) or a list),
        C(body_regex), C(json_path), C(json_value), C(method) (V(GET) or V(HEAD)).
    type: list
    elements: raw
    default: []
  base_url:
    description: Where the smoke checks go (smoke, window), without the path. An example is V(http://127.0.0.1:20001).
    type: str
  host_header:
    description: The Host header of the smoke checks and probes (the app's domain).
    type: str
  validate_certs:
    description: Verify TLS certificates of O(base_url) and O(probe_url).
    type: bool
    default: false
  probe_url:
    description: The URL probed during the window (the public endpoint's health path).
    type: str
  probe_json_path:
    description: JSON field the probe's answer must have.
    type: str
  probe_json_value:
    description: Value that field must have (the version just released).
    type: raw
  seconds:
    description: Length of the window.
    type: float
    default: 10
  interval:
    description: Seconds between probes in the window.
    type: float
    default: 0.5
  steps:
    description: Canary shares in percent, rising from 1 to 99; a last V(100) is the switch that follows them.
    type: list
    elements: int
    default: []
  hold:
    description: Seconds each canary step is held and judged.
    type: float
    default: 30
  max_error_rate:
    description:
      - How much larger the new colour's share of 5xx answers may be than the previous colour's (V(0.01) is one
        percentage point); with no baseline, the largest acceptable share itself.
    type: float
    default: 0.01
  min_requests:
    description: Requests needed before traffic is judged.
    type: int
    default: 20
  latency_factor:
    description: How many times the previous colour's p95 the new one's may reach.
    type: float
    default: 2
  latency_floor_ms:
    description: The new colour's p95 may always be this much above the previous colour's.
    type: float
    default: 100
  timeout:
    description: Seconds one smoke check or probe may take.
    type: float
    default: 5
  drain_timeout:
    description: Seconds a switch back waits for the new colour's open requests before leaving it draining.
    type: float
    default: 30
  state_file:
    description: HAProxy's server-state-file, rewritten after a switch so a reload keeps it.
    type: path
  sticky:
    description:
      - During the canary steps, each visitor keeps the colour it first got (HAProxy's cookie C(onebox_<app>), which
        the haproxy role sets for apps with C(rollout_sticky)), so a visitor does not flip between versions.
      - The backend is added to O(sticky_map) for the steps and removed after, so the full switch and a switch back
        move every visitor.
    type: bool
    default: false
  sticky_map:
    description: The map haproxy.cfg consults for stickiness (C(haproxy_canary_map) of the haproxy role).
    type: path
    default: /etc/haproxy/onebox-canary.map
  skip_paths:
    description:
      - Paths whose requests are not counted as traffic, such as the health path the probes and monitors ask, or
        long polls and event streams whose answers are slow by design. A path ending in V(*) is a prefix
        (V(/events/*)).
    type: list
    elements: str
    default: []
notes:
  - Check mode changes no weight and switches nothing; it runs the smoke checks (they only read) and reports.
extends_documentation_fragment:
  - onebox.platform.attributes
attributes:
  check_mode:
    support: partial
    details: Only the smoke checks run; canary steps and the window are skipped.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Smoke-check the new colour on its private port
  onebox.platform.release_verify:
    phase: smoke
    base_url: http://127.0.0.1:20001
    host_header: shop.example.com
    checks:
      - /
      - {path: /login, status: 200, body_regex: "<form"}
      - {path: /api/v1/status, json_path: db, json_value: ok}

- name: Canary 10 %, then 50 %, 30 s each
  onebox.platform.release_verify:
    phase: canary
    backend: app_shop
    server: green
    back_to: blue
    steps: [10, 50]
    hold: 30

- name: Verification window after the switch
  onebox.platform.release_verify:
    phase: window
    backend: app_shop
    server: green
    back_to: blue
    base_url: http://127.0.0.1
    host_header: shop.example.com
    checks: [/]
    probe_url: http://127.0.0.1/health
    probe_json_path: version
    probe_json_value: v42
    seconds: 10
"""

RETURN = r"""
verdict:
  description: V(passed) (smoke, canary), V(kept) (window), V(switched-back) or V(failed).
  returned: always
  type: str
  sample: kept
reason:
  description: Why the release was judged bad.
  returned: on failure
  type: str
  sample: 12 of 131 requests answered 5xx (9.2 %, over the 1 % limit)
figures:
  description: The new colour's real requests in the window (or the last canary step). p95_ms is null without requests.
  returned: canary, window
  type: dict
  sample: {requests: 512, errors_5xx: 0, error_rate: 0.0, p95_ms: 4}
baseline:
  description: The previous colour's recent requests (the latency gate's reference), null without one.
  returned: canary, window
  type: dict
  sample: {requests: 1000, errors_5xx: 0, error_rate: 0.0, p95_ms: 3}
latency_bound_ms:
  description: The p95 the new colour must stay under; null when no baseline.
  returned: canary, window
  type: float
  sample: 103
enough_traffic:
  description: Whether O(min_requests) requests were seen.
  returned: canary, window
  type: bool
note:
  description: Said when there was too little traffic to judge.
  returned: sometimes
  type: str
steps:
  description: Each canary step with its weights and figures.
  returned: canary
  type: list
  elements: dict
  sample: [{percent: 10, weights: {green: 10, blue: 90}, held_s: 30.0, requests: 51, errors_5xx: 0, p95_ms: 4}]
smoke:
  description: Each smoke check's result.
  returned: smoke, window
  type: list
  elements: dict
  sample: [{path: /, ok: true, status: 200, reason: null, ms: 3.1}]
switched_back:
  description: Whether traffic was sent back to O(back_to).
  returned: canary, window
  type: bool
switched_back_at:
  description: When (seconds since the epoch) traffic went back.
  returned: when switched back
  type: float
judged_after_s:
  description: Seconds from the start of the window (or step) to the verdict.
  returned: canary, window
  type: float
traffic_judged:
  description: False when HAProxy had no request ring (haproxy.cfg older than this module), so the probes alone judged.
  returned: window, on success
  type: bool
probes:
  description: Health probes made in the window.
  returned: window
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.apps import rollout_steps
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import HAProxyError
from ansible_collections.onebox.platform.plugins.module_utils.health import Expectation
from ansible_collections.onebox.platform.plugins.module_utils.traffic import Gates
from ansible_collections.onebox.platform.plugins.module_utils.verify import (
    Verifier,
    VerifyError,
    health_probe,
    normalize_checks,
    smoke,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            phase=dict(type="str", required=True, choices=["smoke", "canary", "window"]),
            socket=dict(type="str", default="/run/haproxy/admin.sock"),
            backend=dict(type="str"),
            server=dict(type="str"),
            back_to=dict(type="str"),
            baseline_server=dict(type="str"),
            ring=dict(type="str", default="onebox-traffic"),
            checks=dict(type="list", elements="raw", default=[]),
            base_url=dict(type="str"),
            host_header=dict(type="str"),
            validate_certs=dict(type="bool", default=False),
            probe_url=dict(type="str"),
            probe_json_path=dict(type="str"),
            probe_json_value=dict(type="raw"),
            seconds=dict(type="float", default=10.0),
            interval=dict(type="float", default=0.5),
            steps=dict(type="list", elements="int", default=[]),
            hold=dict(type="float", default=30.0),
            max_error_rate=dict(type="float", default=0.01),
            min_requests=dict(type="int", default=20),
            latency_factor=dict(type="float", default=2.0),
            latency_floor_ms=dict(type="float", default=100.0),
            timeout=dict(type="float", default=5.0),
            drain_timeout=dict(type="float", default=30.0),
            state_file=dict(type="path"),
            skip_paths=dict(type="list", elements="str", default=[]),
            sticky=dict(type="bool", default=False),
            sticky_map=dict(type="path", default="/etc/haproxy/onebox-canary.map"),
        ),
        required_if=[
            ("phase", "smoke", ("base_url",)),
            ("phase", "canary", ("backend", "server", "back_to")),
            ("phase", "window", ("backend", "server", "probe_url")),
        ],
        supports_check_mode=True,
    )
    p = module.params
    try:
        checks = normalize_checks(p["checks"])
        gates = Gates(p["max_error_rate"], p["min_requests"], p["latency_factor"], p["latency_floor_ms"])
    except ValueError as exc:
        module.fail_json(msg=f"release_verify: {exc}")
    try:
        steps = rollout_steps(list(p["steps"]))
    except ValueError as exc:
        module.fail_json(msg=f"release_verify: {exc}")

    def smoke_at(base):
        return smoke(base, checks, p["host_header"], p["validate_certs"], p["timeout"])

    try:
        if p["phase"] == "smoke" or module.check_mode:
            results = smoke_at(p["base_url"]) if p["base_url"] else []
            module.exit_json(changed=False, verdict="passed", smoke=results)
        verifier = Verifier(
            p["socket"],
            p["backend"],
            p["server"],
            baseline_server=p["baseline_server"] or p["back_to"],
            gates=gates,
            skip_paths=p["skip_paths"],
            ring=p["ring"],
            state_file=p["state_file"],
            drain_timeout=p["drain_timeout"],
        )
        traffic = True
        if p["phase"] == "canary":
            # No ring: fail here, before any weight changes.
            verifier.read_baseline()
        else:
            try:
                verifier.read_baseline()
            except LookupError as exc:
                # A server whose haproxy.cfg predates the ring still deploys, judged
                # on the probes alone, and says how to get the traffic gates.
                traffic = False
                module.warn(f"{exc}. This window is judged on the health probes only.")
        if p["phase"] == "canary":
            facts = verifier.canary(steps, p["hold"], p["back_to"], p["sticky_map"] if p["sticky"] else None)
            module.exit_json(changed=bool(steps), switched_back=False, **facts)

        expect = Expectation(["200"], None, p["probe_json_path"], p["probe_json_value"])
        probe_fn = health_probe(p["probe_url"], expect, p["host_header"], p["validate_certs"], p["timeout"])
        smoke_results = []

        def smoke_fn():
            if not checks or not p["base_url"]:
                return None
            try:
                smoke_results.extend(smoke_at(p["base_url"]))
            except VerifyError as exc:
                smoke_results.extend(exc.facts["smoke"])
                return str(exc)
            return None

        facts = verifier.window(
            p["seconds"], probe_fn, p["interval"], back_to=p["back_to"], smoke_fn=smoke_fn, traffic=traffic
        )
        facts["traffic_judged"] = traffic
        if facts.get("note"):
            module.warn(facts["note"])
        module.exit_json(changed=False, switched_back=False, smoke=smoke_results, probes=probe_fn.counter["n"], **facts)
    except VerifyError as exc:
        facts = dict(exc.facts)
        facts.setdefault("verdict", "failed")
        changed = bool(facts.get("switched_back"))
        module.fail_json(msg=f"release_verify: {exc}", changed=changed, reason=facts.pop("reason", str(exc)), **facts)
    except (HAProxyError, LookupError, RuntimeError) as exc:
        module.fail_json(msg=f"release_verify: {exc}", verdict="failed")


if __name__ == "__main__":
    main()
