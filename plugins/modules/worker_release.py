#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: worker_release
short_description: Replace a worker's running container by its other colour, start-first or stop-first
version_added: "0.3.0"
description:
  - A worker (an app of kind C(worker) in C(onebox_apps), no HTTP) has two containers, C(<app>-blue) and
    C(<app>-green). One runs; the other is stopped and holds the previous version, so a rollback starts it again.
  - This module starts O(colour)'s container (created beforehand, for instance by M(community.docker.docker_container)
    with C(state=present)) in place of the one that runs, in the app's O(order).
  - V(start-first) starts the new container and waits until Docker reports it healthy (or, for an image without a
    health check, running for O(settle) seconds without a restart) before the old one gets C(SIGTERM). There is
    no gap; for a moment both run.
  - V(stop-first) stops the old container first and waits for it (jobs that must never run twice), then starts the
    new one. There is a gap and no overlap.
  - Either way the old container is stopped with C(docker stop -t) O(stop_timeout), that is C(SIGTERM), then up to that
    many seconds to finish its job before Docker kills it (reported as C(killed) in RV(old_stop)).
  - When the new container does not become healthy, it is stopped; the old one keeps running (start-first) or is
    started again (stop-first); the module fails and says so.
  - The same code (module_utils worker) is what the on-server C(onebox rollback) runs for a worker.
author:
  - onebox.platform developers (@onebox)
options:
  app:
    description: The app's name; its containers are C(<app>-<colour>).
    type: str
    required: true
  colour:
    description: The colour to start (its container must exist).
    type: str
    required: true
  colours:
    description: Both colours.
    type: list
    elements: str
    default: [blue, green]
  order:
    description: Start the new one first, or stop the old one first.
    type: str
    choices: [start-first, stop-first]
    default: start-first
  stop_timeout:
    description: Seconds the old container gets after C(SIGTERM) to finish its job.
    type: int
    default: 10
  health_timeout:
    description: Seconds the new container gets to become healthy.
    type: float
    default: 120
  settle:
    description: For an image without a health check, seconds it must run without a restart to count as healthy.
    type: float
    default: 3
notes:
  - Supports check mode (reports what it would stop and start) and diff (which colour runs).
  - Needs the C(docker) CLI on the server.
extends_documentation_fragment:
  - onebox.platform.attributes.check_diff
"""

EXAMPLES = r"""
- name: Replace the worker, the new one healthy before the old one stops
  onebox.platform.worker_release:
    app: mailer
    colour: green
    order: start-first
    stop_timeout: 30

- name: Jobs that must never run twice
  onebox.platform.worker_release:
    app: billing
    colour: blue
    order: stop-first
"""

RETURN = r"""
new:
  description: The container started.
  returned: always
  type: str
  sample: mailer-green
old:
  description: The container stopped (empty on a first deploy or when it was not running).
  returned: always
  type: str
  sample: mailer-blue
old_stop:
  description: How the old container ended (C(stop_ms), C(exit_code), C(killed) when it outlived O(stop_timeout)).
  returned: when a container was stopped
  type: dict
  sample: {stop_ms: 2100, exit_code: 0, killed: false}
gap_ms:
  description: stop-first, the time from the old container's stop to the new one healthy.
  returned: success
  type: int
overlap_ms:
  description: start-first, the time both ran (from the new one's start to the old one's stop).
  returned: success
  type: int
switch_ms:
  description: The whole replacement, in milliseconds.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils import worker


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            colour=dict(type="str", required=True),
            colours=dict(type="list", elements="str", default=["blue", "green"]),
            order=dict(type="str", choices=list(worker.ORDERS), default="start-first"),
            stop_timeout=dict(type="int", default=10),
            health_timeout=dict(type="float", default=120),
            settle=dict(type="float", default=3),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["colour"] not in p["colours"]:
        module.fail_json(msg=f"colour {p['colour']} is not one of {p['colours']}")
    docker_bin = module.get_bin_path("docker", required=True)

    def docker(args):
        return module.run_command([docker_bin, *args])

    new = f"{p['app']}-{p['colour']}"
    try:
        found = {c: worker.inspect(docker, f"{p['app']}-{c}") for c in p["colours"]}
    except worker.WorkerError as exc:
        module.fail_json(msg=str(exc))
    if found[p["colour"]] is None:
        module.fail_json(msg=f"{new} does not exist: create it (state=present) before starting it. Nothing changed.")
    running = [c for c in p["colours"] if c != p["colour"] and worker.health(found[c]) != "exited"]
    old = f"{p['app']}-{running[0]}" if running else ""
    new_running = worker.health(found[p["colour"]]) != "exited"
    diff = dict(before=dict(running=old or "none"), after=dict(running=new))
    if new_running and not old:
        module.exit_json(changed=False, new=new, old="", old_stop={}, gap_ms=0, overlap_ms=0, switch_ms=0)
    if module.check_mode:
        module.exit_json(changed=True, new=new, old=old, old_stop={}, gap_ms=0, overlap_ms=0, switch_ms=0, diff=diff)
    try:
        result = worker.release(
            docker, new, old, p["order"], p["stop_timeout"], p["health_timeout"], settle=p["settle"]
        )
    except worker.WorkerError as exc:
        module.fail_json(msg=f"{p['app']}: {exc}")
    module.exit_json(changed=True, diff=diff, **result)


if __name__ == "__main__":
    main()
