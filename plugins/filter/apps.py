# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: apps
short_description: The checked app model (onebox_apps), or one app read from the old single-app variables
version_added: "0.2.0"
description:
  - Checks a list of apps and completes each with its defaults and C(derived) names (HAProxy backend, host
    ports of the blue and green colours, container names, state/config/backup directories, lock, history).
  - A bad model fails with one line per mistake (two apps with the same name or domain, colliding ports, a
    worker with a domain, an unknown kind, a web app without a health path...).
  - When the list is empty and O(legacy) holds C(app_image), the old single-app variables are read as one app.
  - When the list is not empty, O(legacy) must not set the old per-app variables (C(app_name), C(app_image),
    C(app_domain), C(app_database_container)...), which would apply to every app.
options:
  _input:
    description: The apps (C(onebox_apps)).
    type: list
    elements: dict
    required: true
  legacy:
    description: The old single-app variables (C(app_name), C(app_image), C(app_domain)...), by name.
    type: dict
    default: {}
  routing_only:
    description:
      - Check only what routing needs (no image), as the haproxy role used alone does. The result then has no
        C(env) or C(secret_env), so it can be shown without leaking secrets.
    type: bool
    default: false
author:
  - onebox.platform developers (@onebox)
"""

EXAMPLES = r"""
- name: Every HAProxy backend, from the model
  ansible.builtin.debug:
    msg: "{{ onebox_apps | onebox.platform.apps | map(attribute='derived.backend') }}"
"""

RETURN = r"""
_value:
  description: The apps, each with all settings and C(derived).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.onebox.platform.plugins.module_utils import apps as model
from ansible_collections.onebox.platform.plugins.module_utils import docker_daemon, programs, site_plan
from ansible_collections.onebox.platform.plugins.module_utils.releases import keep_versions


def apps(value, legacy=None, routing_only=False):
    try:
        raw = list(value or [])
        if raw and legacy:
            model.refuse_mixed(legacy)
        if not raw and legacy:
            raw = model.from_legacy(legacy)
        out = model.normalize(raw, need_image=not routing_only, settings=model.settings_of(legacy))
        if routing_only:
            # Routing needs no environment: keep secrets out of the result.
            out = [{k: v for k, v in app.items() if k not in ("env", *model.SECRET_KEYS)} for app in out]
        return out
    except model.ModelError as exc:
        raise AnsibleFilterError(f"onebox_apps: {exc}") from None


def app_select(value, wanted="all"):
    try:
        return model.select(value, wanted)
    except model.ModelError as exc:
        raise AnsibleFilterError(str(exc)) from None


def app_paths(name):
    if not isinstance(name, str) or not model.NAME.match(name):
        raise AnsibleFilterError(f"app_paths: {name!r} is not an app name")
    return model.paths(name)


def app_environment(app, credentials=None):
    env, warnings = model.environment(app, credentials or {})
    return {"env": env, "warnings": warnings}


def env_applied(env, container_env):
    return model.env_applied(env or {}, container_env or [])


def app_credential_files(app):
    return model.credential_files(app or {})


def data_stores(value, secrets=True):
    return model.data_stores(value or [], secrets=secrets)


def apps_public(value):
    return site_plan.public(value or [])


def platform_plan(value, variables=None):
    return site_plan.plan(value or [], variables or {})


def tls_probe_targets(value, https_port=443):
    return model.tls_probe_targets(value, https_port)


def release_keep(versions, keep, running=None):
    return keep_versions(versions or [], keep, running or [])


def docker_daemon_config(defaults, options=None, current=None, engine=None):
    try:
        return docker_daemon.config(defaults or {}, options or {}, current, engine)
    except docker_daemon.DaemonConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def program_files(name, root, home=None, command=True):
    try:
        return programs.files(name, root, home=home, command=command)
    except programs.ProgramError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {
            "apps": apps,
            "app_select": app_select,
            "app_paths": app_paths,
            "app_environment": app_environment,
            "app_credential_files": app_credential_files,
            "env_applied": env_applied,
            "data_stores": data_stores,
            "platform_plan": platform_plan,
            "apps_public": apps_public,
            "release_keep": release_keep,
            "tls_probe_targets": tls_probe_targets,
            "docker_daemon_config": docker_daemon_config,
            "program_files": program_files,
        }
