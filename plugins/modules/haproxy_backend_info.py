#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: haproxy_backend_info
short_description: Read the servers of HAProxy backends over the Runtime API
version_added: "0.1.0"
description:
  - Reports every server of one backend, or of every backend with servers, as HAProxy sees it now
    (admin and operational state, health check, open sessions, weight, address, whether it is a
    backup server) and which servers are live. Changes nothing.
  - It is the read of M(onebox.platform.haproxy_backend), which changes backends; its
    O(onebox.platform.haproxy_backend#module:state=query) is deprecated in favour of this module.
author:
  - onebox.platform developers (@onebox)
options:
  socket:
    description:
      - The Runtime API socket, a UNIX socket path or V(tcp://HOST:PORT). C(level user) is enough.
    type: str
    default: /run/haproxy/admin.sock
  backend:
    description:
      - Name of the backend to read. Without it, every backend that has servers (RV(backends)).
      - A backend HAProxy does not have is an error that names it.
    type: str
  timeout:
    description: Socket timeout in seconds, for the connection and every answer.
    type: float
    default: 5
extends_documentation_fragment:
  - onebox.platform.attributes.info
seealso:
  - module: onebox.platform.haproxy_backend
"""

EXAMPLES = r"""
- name: Which colour of the shop is live?
  onebox.platform.haproxy_backend_info:
    backend: app_shop
  register: shop

- name: Say it
  ansible.builtin.debug:
    msg: "live: {{ shop.active | join(', ') }}; backup: {{ shop.backup | join(', ') or 'none' }}"

- name: Every backend, over the TCP socket
  onebox.platform.haproxy_backend_info:
    socket: tcp://127.0.0.1:9999
  register: lb

- name: Backends with no healthy live server
  ansible.builtin.debug:
    msg: "{{ lb.backends | dict2items | rejectattr('value.healthy') | map(attribute='key') | list }}"
"""

RETURN = r"""
backend:
  description: The backend read, as O(backend) named it.
  returned: when O(backend) is set
  type: str
  sample: app_shop
active:
  description: Live servers of O(backend) (admin state ready), backup servers included.
  returned: when O(backend) is set
  type: list
  elements: str
  sample: [blue]
backup:
  description: Backup servers of O(backend) that are live (HAProxy's fallback behind the active ones).
  returned: when O(backend) is set
  type: list
  elements: str
  sample: [green_fallback]
healthy:
  description: Whether a live server of O(backend) that is not a backup passes its health check.
  returned: when O(backend) is set
  type: bool
  sample: true
servers:
  description: Every server of O(backend), by name.
  returned: when O(backend) is set
  type: dict
  sample:
    blue: {admin_state: ready, op_state: up, status: UP, check_status: L7OK, sessions: 3, weight: 1,
           address: "127.0.0.1:8001", backup: false}
    green: {admin_state: maint, op_state: down, status: MAINT, check_status: "", sessions: 0, weight: 1,
            address: "127.0.0.1:8002", backup: false}
backends:
  description:
    - Without O(backend), every backend that has servers, by name, each with RV(active), RV(backup),
      RV(healthy) and RV(servers) as above.
  returned: when O(backend) is not set
  type: dict
  sample:
    app_shop:
      active: [blue]
      backup: []
      healthy: true
      servers:
        blue: {admin_state: ready, op_state: up, status: UP, check_status: L7OK, sessions: 3, weight: 1,
               address: "127.0.0.1:8001", backup: false}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import (
    PUBLIC_FIELDS,
    HAProxyError,
    RuntimeClient,
    describe_servers,
    is_healthy,
    live_servers,
)

FIELDS = PUBLIC_FIELDS + ("backup",)


def read(client, backend):
    """One backend as the module returns it."""
    servers = describe_servers(client, backend)
    live = live_servers(servers)
    return dict(
        active=live,
        backup=[n for n in live if servers[n]["backup"]],
        healthy=any(is_healthy(servers[n]) for n in live if not servers[n]["backup"]),
        servers={n: {k: s[k] for k in FIELDS} for n, s in servers.items()},
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="str", default="/run/haproxy/admin.sock"),
            backend=dict(type="str"),
            timeout=dict(type="float", default=5.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    client = RuntimeClient(p["socket"], timeout=p["timeout"])
    try:
        if p["backend"]:
            module.exit_json(changed=False, backend=p["backend"], **read(client, p["backend"]))
        names = sorted(client.servers_state())
        module.exit_json(changed=False, backends={name: read(client, name) for name in names})
    except HAProxyError as exc:
        module.fail_json(msg=f"{exc} (socket {p['socket']})")


if __name__ == "__main__":
    main()
