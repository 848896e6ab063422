#!/usr/bin/python
# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_state
short_description: Read which colour of a blue-green app is live, what each colour runs, and its release history
version_added: "0.1.0"
description:
  - Reads in one call what a deploy or a rollback needs before it acts, and changes nothing.
  - From HAProxy's Runtime API, the servers of the app's backend that are live (ready).
  - From Docker, each colour's container C(<app>-<colour>) - whether it exists and runs, its image and
    the version in its C(onebox_version) label.
  - From O(history), the app's release history (one JSON object per line, as the
    M(onebox.platform.app) role writes it).
  - RV(rollback_target) is the version a rollback without a named target goes back to, the newest release
    before the live one, skipping releases a rollback has left (unless deployed again since).
  - In maintenance (O(maintenance_file) names a colour and none is live), RV(current_colour) is the colour
    C(maintenance=off) will bring back and the idle colour is the other one, so a deploy during maintenance
    never replaces the release the site will come back to unless it is that release's successor.
  - The live colour is the first colour that HAProxy sends traffic to AND whose container runs; with
    none (a first deploy) it is empty and the idle colour is the first colour.
  - One module run instead of three (a backend query, a container query per colour, reading the
    history) saves about 2 seconds per playbook run over SSH or C(docker exec).
author:
  - onebox.platform developers (@onebox)
options:
  app:
    description: The app's name; its containers are C(<app>-<colour>).
    type: str
    required: true
  socket:
    description: HAProxy's Runtime API socket, a UNIX socket path or V(tcp://HOST:PORT).
    type: str
    default: /run/haproxy/admin.sock
  backend:
    description: HAProxy backend of the app. Defaults to C(app_<app>), the M(onebox.platform.haproxy) role's name.
    type: str
  colours:
    description: The colours, which are also the backend's server names.
    type: list
    elements: str
    default: [blue, green]
  history:
    description:
      - Path of the release history (JSON lines) to return as RV(releases). A missing file is an empty
        history; a line that is not JSON fails the module, naming the line.
      - A torn last line (no newline and not JSON, a write cut short) is left out with a warning; the next
        M(onebox.platform.release_record) of a release keeps it aside and repairs the file.
    type: path
  maintenance_file:
    description:
      - The file C(maintenance.yml) writes when it takes the app down, naming the colour that
        C(maintenance=off) brings back. While it exists and no colour is live, the app is in maintenance.
    type: path
  env_file:
    description:
      - The app's env file as it is now (C(docker --env-file)). With it, each colour's RV(colours) entry says
        in C(env_current) whether its container was started with every line of it, and a rollback to a standby
        colour that runs with an older environment (its database credentials changed since, say) starts the
        version again instead of switching to it (RV(release) C(standby_ready) false).
      - Its contents are never returned. A missing file counts as unknown (every colour current).
    type: path
  timeout:
    description: Socket timeout in seconds for HAProxy.
    type: float
    default: 5
  action:
    description:
      - With V(deploy) or V(rollback), also choose the release (module_utils releases) and return it in RV(release).
      - V(rollback) without O(version) goes back to the previous good release; a version not in the history, or no
        release to go back to, fails with a message and changes nothing.
    type: str
    choices: [deploy, rollback]
  version:
    description: The version to deploy, or to roll back to (empty for a rollback to the previous good release).
    type: str
    default: ""
  kind:
    description:
      - V(web) reads the live colour from HAProxy. V(worker) (no HTTP, no backend) takes the colour whose container
        runs as the live one.
    type: str
    choices: [web, worker]
    default: web
notes:
  - Needs the C(docker) command on the target.
extends_documentation_fragment:
  - onebox.platform.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    description: Changes nothing, so there is never a diff.
    support: none
"""

EXAMPLES = r"""
- name: Which colour is live, and what runs on each?
  onebox.platform.app_state:
    app: shop
    history: /var/lib/onebox/shop/releases.jsonl
  register: shop

- name: Say it
  ansible.builtin.debug:
    msg: >-
      {{ shop.live_colour or 'nothing' }} is live,
      running {{ shop.colours[shop.live_colour].version | default('-') }}
"""

RETURN = r"""
live_colour:
  description: The colour that takes traffic and whose container runs; empty when there is none.
  returned: success
  type: str
  sample: blue
current_colour:
  description:
    - The colour of the current release, the live one or, in maintenance, the one C(maintenance=off) brings
      back; empty before the first deploy.
  returned: success
  type: str
  sample: blue
maintenance_colour:
  description: In maintenance, the colour C(maintenance=off) brings back; empty otherwise.
  returned: success
  type: str
  sample: ""
idle_colour:
  description: The colour a deploy would use next (not the current one).
  returned: success
  type: str
  sample: green
haproxy_active:
  description: The backend's servers that are ready in HAProxy (whatever their containers do).
  returned: success
  type: list
  elements: str
  sample: [blue]
colours:
  description: Per colour, its container (C(env_current) - started with the env file as it is now, see O(env_file)).
  returned: success
  type: dict
  sample:
    blue: {exists: true, running: true, version: v2, image: "registry.example.com/shop:v2", container: shop-blue,
           env_current: true}
    green: {exists: true, running: true, version: v1, image: "registry.example.com/shop:v1", container: shop-green,
            env_current: true}
releases:
  description: The release history, oldest first (empty without O(history) or without the file).
  returned: success
  type: list
  elements: dict
  sample: [{action: deploy, version: v2, colour: blue, time: "2026-11-23T12:00:00Z"}]
rollback_target:
  description:
    - The version C(rollback.yml) goes back to when none is named; empty when the history has none.
    - The newest release other than the live colour's version, skipping versions a rollback has left and
      that no deploy brought back since, so rolling back twice never rolls forward.
  returned: success
  type: str
  sample: v41
release:
  description:
    - With O(action), the release chosen - C(version), C(standby_ready) (the idle colour already runs it, so a
      rollback is one switch; not when it runs with an older environment),
      C(leaving) (the history entry of the release being left) and C(pinned) (for a rollback,
      the registry digest the target version was deployed from, to pull instead of its tag; empty when none).
  returned: always (empty without O(action))
  type: dict
  sample:
    version: v41
    standby_ready: true
    leaving: {action: deploy, version: v42, backup: /var/backups/onebox/shop/predeploy-shop.dump}
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onebox.platform.plugins.module_utils import release_log
from ansible_collections.onebox.platform.plugins.module_utils.apps import backend_name
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import (
    HAProxyError,
    RuntimeClient,
    describe_servers,
    live_servers,
)
from ansible_collections.onebox.platform.plugins.module_utils.live_state import colour_info, read_env_file, resolve
from ansible_collections.onebox.platform.plugins.module_utils.releases import ReleaseError, choose, rollback_target


def containers(module, names):
    """{name: docker inspect's object} of the NAMES that exist."""
    docker = module.get_bin_path("docker", required=True)
    rc, out, err = module.run_command([docker, "container", "inspect", *names])
    missing = [line for line in err.splitlines() if "no such container" in line.lower()]
    if rc != 0 and len(missing) != len([line for line in err.splitlines() if line.strip()]):
        module.fail_json(msg=f"docker container inspect failed (rc {rc}): {err.strip()}. Is the Docker daemon running?")
    try:
        found = json.loads(out or "[]")
    except ValueError:
        module.fail_json(msg=f"docker container inspect printed something that is not JSON: {out[:200]}")
    return {c["Name"].lstrip("/"): c for c in found}


def read_env(module, path):
    """The env file's lines, or None when there is none (or no path)."""
    try:
        return read_env_file(path)
    except OSError as exc:
        module.fail_json(msg=f"Cannot read the env file {path}: {exc.strerror}. Is the play run with become?")


def read_history(module, path):
    try:
        return release_log.read_releases(path, warn=module.warn)
    except release_log.ReleaseLogError as exc:
        module.fail_json(msg=str(exc))


def read_maintenance(module, path, colours):
    """The colour maintenance=off will bring back, or "" when not in maintenance."""
    try:
        return release_log.read_maintenance(path, colours)
    except release_log.ReleaseLogError as exc:
        module.fail_json(msg=str(exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            socket=dict(type="str", default="/run/haproxy/admin.sock"),
            backend=dict(type="str"),
            colours=dict(type="list", elements="str", default=["blue", "green"]),
            history=dict(type="path"),
            env_file=dict(type="path"),
            maintenance_file=dict(type="path"),
            timeout=dict(type="float", default=5.0),
            kind=dict(type="str", choices=["web", "worker"], default="web"),
            action=dict(type="str", choices=["deploy", "rollback"]),
            version=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if len(p["colours"]) < 2 or len(set(p["colours"])) != len(p["colours"]):
        module.fail_json(msg=f"colours needs two or more different names, got {p['colours']}")
    names = {colour: f"{p['app']}-{colour}" for colour in p["colours"]}
    found = containers(module, list(names.values()))
    env = read_env(module, p["env_file"])
    colours = {colour: colour_info(name, found.get(name), env) for colour, name in names.items()}
    if p["kind"] == "worker":
        # No HAProxy: the live colour of a worker is the one whose container runs.
        active = [c for c in p["colours"] if colours[c]["running"]]
    else:
        backend = p["backend"] or backend_name(p["app"])
        try:
            servers = describe_servers(RuntimeClient(p["socket"], timeout=p["timeout"]), backend)
        except HAProxyError as exc:
            module.fail_json(msg=f"Cannot read backend {backend} from HAProxy at {p['socket']}: {exc}")
        active = live_servers(servers)
    state = resolve(
        p["colours"], active, colours, lambda: read_maintenance(module, p["maintenance_file"], p["colours"])
    )
    releases = read_history(module, p["history"])
    release = {}
    if p["action"]:
        try:
            release = choose(p["action"], p["version"], releases, state["current_version"], colours[state["idle"]])
        except ReleaseError as exc:
            module.fail_json(msg=str(exc))
    module.exit_json(
        release=release,
        changed=False,
        live_colour=state["live"],
        current_colour=state["current"],
        maintenance_colour=state["maintenance"],
        idle_colour=state["idle"],
        haproxy_active=active,
        colours=colours,
        releases=releases,
        rollback_target=rollback_target(releases, state["current_version"]),
    )


if __name__ == "__main__":
    main()
