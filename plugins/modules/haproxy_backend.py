#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: haproxy_backend
short_description: Switch the live servers of an HAProxy backend (blue-green) over the Runtime API
version_added: "0.1.0"
description:
  - Makes a set of servers (a colour) live and takes every other server of the backend out, in one
    Runtime API command line, without reloading HAProxy.
  - Servers in maintenance that must go live are first moved to drain, so their health checks run
    again without traffic; with O(require_healthy=true) the switch happens only once their checks
    pass with full health. Otherwise they go back to maintenance and the module fails, naming each
    server and its check status. Traffic never moves to a failing server and the backend is never
    left without a live server.
  - Servers taken out are drained (no new sessions); the module waits until their sessions end
    (O(drain_timeout)), then puts them in maintenance (or leaves them draining, O(inactive_state)).
    When sessions outlive the timeout the servers stay draining and RV(drain_timed_out) is true.
  - With O(state_file) the state is written to HAProxy's server-state file after every change, so
    a reload or restart keeps it (HAProxy needs C(server-state-file) and
    C(load-server-state-from-file global); the M(onebox.platform.haproxy) role sets both).
  - O(state=query) changes nothing and returns every server's state. It is deprecated and will be
    removed in 2.0.0; read backends with M(onebox.platform.haproxy_backend_info).
  - C(changed) follows admin state and weight only, never traffic counters.
author:
  - onebox.platform developers (@onebox)
options:
  socket:
    description:
      - The Runtime API socket, a UNIX socket path or V(tcp://HOST:PORT). It needs C(level admin).
    type: str
    default: /run/haproxy/admin.sock
  backend:
    description: Name of the backend.
    type: str
    required: true
  state:
    description:
      - V(active) makes O(active) the live servers.
      - V(query) only reports (deprecated, removed in 2.0.0; use M(onebox.platform.haproxy_backend_info)).
      - V(save) writes the current state to O(state_file) (run it before reloading HAProxy).
      - V(maintenance) takes every server out on purpose (drain, wait for sessions, maintenance), and
        HAProxy then answers 503 with the backend's error page. V(active) brings servers back.
      - V(drained) changes nothing; it waits up to O(drain_timeout) until the O(servers) have no session
        left (requests in flight, WebSocket tunnels), and reports how many are still open
        (RV(sessions_left)). Run it before replacing a drained server's process.
    type: str
    choices: [active, query, save, maintenance, drained]
    default: active
  active:
    description:
      - Servers to make live (ready). Every other server of the backend is taken out.
      - Required with O(state=active); must not be empty.
    type: list
    elements: str
  servers:
    description: With O(state=drained), the servers to wait for.
    type: list
    elements: str
  fallback:
    description:
      - With O(state=active), a server that stays behind the new live ones - the colour being left, which keeps
        running - through its backup twin C(<fallback>_fallback) (a C(backup) server line on the same address,
        as the M(onebox.platform.haproxy) role writes for each colour). HAProxy sends it traffic only while no
        live server is up, for example when the new version crashes right after the switch; retried requests
        land there instead of failing.
      - Ignored, with a warning, when the backend has no such server line.
    type: str
  inactive_state:
    description: Where the servers taken out end, once drained.
    type: str
    choices: [maint, drain]
    default: maint
  weights:
    description: Weights (0-256) to set on servers, by server name.
    type: dict
  require_healthy:
    description:
      - Refuse to make live a server whose health check is failing or not yet confirmed.
      - Turn off only for servers without health checks that you know are up.
    type: bool
    default: true
  health_timeout:
    description: Seconds to wait for woken servers to pass their health checks.
    type: float
    default: 15
  drain_timeout:
    description: Seconds to wait for sessions on drained servers to end (also the bound of O(state=drained)).
    type: float
    default: 30
  timeout:
    description: Socket timeout in seconds, for the connection and every answer.
    type: float
    default: 5
  state_file:
    description:
      - Path of HAProxy's C(server-state-file). When set, the state is saved there after a change.
    type: path
notes:
  - Check mode reports what would change and the Runtime API commands that would be sent.
  - Supports diff mode; the diff lists each server's admin state and weight.
  - Unlike M(community.general.haproxy), it moves the whole set at once, guards on health,
    applies its socket timeout and keeps state across reloads.
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
"""

EXAMPLES = r"""
- name: Send traffic to green, drain blue, then put blue in maintenance
  onebox.platform.haproxy_backend:
    backend: app
    active: [green]
    state_file: /var/lib/haproxy/server-state

- name: Before replacing the green container, wait for its open requests to end
  onebox.platform.haproxy_backend:
    backend: app_shop
    state: drained
    servers: [green]
    drain_timeout: 30
  register: drained

- name: Save the state before a reload
  onebox.platform.haproxy_backend:
    backend: app
    state: save
    state_file: /var/lib/haproxy/server-state

- name: Put the app in maintenance (HAProxy answers 503 with the maintenance page)
  onebox.platform.haproxy_backend:
    backend: app
    state: maintenance
    state_file: /var/lib/haproxy/server-state

- name: Which colour is live?
  onebox.platform.haproxy_backend_info:
    backend: app
  register: lb

- name: Show it
  ansible.builtin.debug:
    msg: "live: {{ lb.active }}"

- name: Switch back, keeping blue draining (faster rollback later)
  onebox.platform.haproxy_backend:
    socket: tcp://127.0.0.1:9999
    backend: app
    active: [blue]
    inactive_state: drain
    drain_timeout: 10
"""

RETURN = r"""
backend:
  description: The backend.
  returned: always
  type: str
  sample: app
previous_active:
  description: Servers that were live (admin state ready) before.
  returned: unless state=save
  type: list
  elements: str
  sample: [blue]
active:
  description: Servers live after the call.
  returned: unless state=save
  type: list
  elements: str
  sample: [green]
servers:
  description: Every server before and after, by name.
  returned: unless state=save
  type: dict
  sample:
    blue:
      before: {admin_state: ready, op_state: up, status: UP, check_status: L7OK, sessions: 3, weight: 1}
      after: {admin_state: maint, op_state: down, status: MAINT, check_status: "", sessions: 0, weight: 1}
switch_ms:
  description: Time the switch command line took, in milliseconds.
  returned: when state=active
  type: float
  sample: 0.41
switched_at:
  description: When the switch command line was sent (UTC, C(YYYY-MM-DDTHH:MM:SSZ)); the release history keeps it.
  returned: when state=active and something changed
  type: str
  sample: "2026-12-05T14:02:11Z"
drain_ms:
  description: Time spent waiting for drained sessions, in milliseconds.
  returned: when state=active or state=drained
  type: float
sessions_left:
  description: With O(state=drained), the sessions still open on each server when the wait ended (none when drained).
  returned: when state=drained
  type: dict
  sample: {blue: 1}
drained_sessions:
  description: Sessions open on each drained server right after the switch.
  returned: when state=active
  type: dict
  sample: {blue: 2}
drain_timed_out:
  description: True when sessions outlived O(drain_timeout); with O(state=active) those servers are left draining.
  returned: when state=active or state=drained
  type: bool
commands:
  description: Runtime API commands sent (or, in check mode, that would be sent).
  returned: unless state=save
  type: list
  elements: str
  sample: ["set server app/green state drain", "set server app/green state ready", "set server app/blue state drain"]
elapsed_ms:
  description: Time the whole call took, in milliseconds.
  returned: unless state=save
  type: float
"""

import datetime as dt
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import (
    PUBLIC_FIELDS,
    HAProxyError,
    RuntimeClient,
    Switch,
    describe_servers,
    fallback_name,
    live_servers,
    wait_drained,
)
from ansible_collections.onebox.platform.plugins.module_utils.release_log import utc_stamp


def public(server):
    return {k: server[k] for k in PUBLIC_FIELDS}


def diff_text(servers):
    return "".join(f"{name}: {s['admin_state']} weight={s['weight']}\n" for name, s in sorted(servers.items()))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="str", default="/run/haproxy/admin.sock"),
            backend=dict(type="str", required=True),
            state=dict(type="str", default="active", choices=["active", "query", "save", "maintenance", "drained"]),
            active=dict(type="list", elements="str"),
            servers=dict(type="list", elements="str"),
            fallback=dict(type="str"),
            inactive_state=dict(type="str", default="maint", choices=["maint", "drain"]),
            weights=dict(type="dict"),
            require_healthy=dict(type="bool", default=True),
            health_timeout=dict(type="float", default=15.0),
            drain_timeout=dict(type="float", default=30.0),
            timeout=dict(type="float", default=5.0),
            state_file=dict(type="path"),
        ),
        required_if=[
            ("state", "active", ("active",)),
            ("state", "save", ("state_file",)),
            ("state", "drained", ("servers",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    start = time.monotonic()
    client = RuntimeClient(p["socket"], timeout=p["timeout"])
    result = dict(changed=False, backend=p["backend"])
    try:
        if p["state"] == "save":
            # Saves every backend's state; the named one need not exist yet
            # (the first reload after installing HAProxy).
            if not module.check_mode:
                client.save_state(p["state_file"])
            module.exit_json(changed=False, backend=p["backend"], state_file=p["state_file"])
        current = describe_servers(client, p["backend"])
        result["previous_active"] = live_servers(current)
        if p["state"] == "query":
            module.deprecate(
                "haproxy_backend state=query is deprecated: read backends with onebox.platform.haproxy_backend_info",
                version="2.0.0",
                collection_name="onebox.platform",
            )
            result.update(
                active=live_servers(current),
                servers={n: {"before": public(s), "after": public(s)} for n, s in current.items()},
                commands=[],
                elapsed_ms=round((time.monotonic() - start) * 1000.0, 3),
            )
            module.exit_json(**result)
        if p["state"] == "drained":
            # The same check of the names as a switch (unknown servers named).
            Switch(client, p["backend"], p["servers"]).validate(current)
            if module.check_mode:
                left = {n: current[n]["sessions"] for n in p["servers"] if current[n]["sessions"] > 0}
                waited = 0.0
            else:
                left, waited = wait_drained(client, p["backend"], p["servers"], p["drain_timeout"])
            module.exit_json(**result, sessions_left=left, drain_ms=waited, drain_timed_out=bool(left))

        active = [] if p["state"] == "maintenance" else list(p["active"])
        if p["state"] == "active" and p["fallback"]:
            if fallback_name(p["fallback"]) in current:
                active.append(fallback_name(p["fallback"]))
            else:
                module.warn(
                    f"backend '{p['backend']}' has no server {fallback_name(p['fallback'])}: no fallback behind "
                    f"{', '.join(p['active'])} (re-run site.yml to update haproxy.cfg)"
                )
        switch = Switch(
            client,
            p["backend"],
            active,
            inactive_state=p["inactive_state"],
            weights={k: int(v) for k, v in (p["weights"] or {}).items()},
            require_healthy=p["require_healthy"],
            health_timeout=p["health_timeout"],
            drain_timeout=p["drain_timeout"],
        )
        if p["state"] == "maintenance":
            switch.allow_empty = True
        switch.validate(current)
        plan = switch.plan(current)
        planned = plan["wake"] + plan["switch"] + plan["finish"]
        changed = bool(planned)
        expected = switch.expected_after(current)
        if module._diff:
            result["diff"] = dict(
                before=diff_text(current),
                after=diff_text(expected),
                prepared="\n".join(planned),
            )
        if module.check_mode or not changed:
            result.update(
                changed=changed,
                active=live_servers(expected),
                servers={n: {"before": public(current[n]), "after": public(expected[n])} for n in current},
                commands=planned,
                switch_ms=0.0,
                drain_ms=0.0,
                drained_sessions={},
                drain_timed_out=False,
                elapsed_ms=round((time.monotonic() - start) * 1000.0, 3),
            )
            module.exit_json(**result)

        out = switch.run()
        if p["state_file"]:
            client.save_state(p["state_file"])
        warnings = []
        if out["drain_timed_out"]:
            warnings.append(
                f"sessions on {', '.join(out['still_draining'])} outlived drain_timeout={p['drain_timeout']:g}s; "
                "left draining (no new traffic). Re-run later to put them in maintenance."
            )
        result.update(
            changed=True,
            active=live_servers(out["after"]),
            servers={n: {"before": public(out["before"][n]), "after": public(out["after"][n])} for n in out["after"]},
            commands=out["commands"],
            switch_ms=out["switch_ms"],
            # When the switch line went (before the wait for drained sessions).
            switched_at=utc_stamp(dt.datetime.fromtimestamp(time.time() - out["drain_ms"] / 1000.0, dt.timezone.utc)),
            drain_ms=out["drain_ms"],
            drained_sessions=out["drained_sessions"],
            drain_timed_out=out["drain_timed_out"],
            elapsed_ms=round((time.monotonic() - start) * 1000.0, 3),
        )
        for w in warnings:
            module.warn(w)
        module.exit_json(**result)
    except HAProxyError as exc:
        module.fail_json(msg=str(exc), **result)


if __name__ == "__main__":
    main()
