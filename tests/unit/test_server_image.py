"""The servers of the platform, backup and deploy scenarios start from
local/debian:bookworm-packages (scripts/images.sh): the base image with the
packages the bootstrap roles install. Its lists must be exactly theirs,
installed as their tasks install them (with or without recommends): a
package the roles no longer install would hide a missing one on a real
server; one they install that the image lacks only costs time, but says the
lists drifted."""

from __future__ import annotations

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = ("base", "ssh_hardening", "firewall", "docker")
# Docker's own repository (docker_install_source: docker) is not used by the
# scenarios; the image installs Docker from Debian, as their inventories say.
OTHER_SOURCE = {("docker", "install-docker.yml")}
# Makes its host keys when installed: every server of the image would share them.
LEFT_TO_THE_ROLES = {"openssh-server"}


def images_sh_list(name):
    with open(os.path.join(ROOT, "scripts", "images.sh")) as fh:
        text = fh.read()
    match = re.search(rf"^{name}=\(([^)]*)\)", text, re.M)
    assert match, f"scripts/images.sh has no {name}=(...)"
    return set(match.group(1).split())


def role_defaults(role):
    path = os.path.join(ROOT, "roles", role, "defaults", "main.yml")
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def names_of(value, defaults):
    """The packages an apt task's name: stands for (a list, or variables joined with +)."""
    if isinstance(value, list):
        return set(value)
    expr = re.fullmatch(r"\{\{\s*(.*?)\s*\}\}", value.strip())
    if not expr:
        return {value}
    found = set()
    for var in (v.strip() for v in expr.group(1).split("+")):
        assert var in defaults, f"cannot resolve {var} for the image's list"
        found |= set(defaults[var])
    return found


def roles_packages():
    """{package: install_recommends} for every apt task of the bootstrap roles."""
    found = {}
    for role in ROLES:
        defaults = role_defaults(role)
        tasks_dir = os.path.join(ROOT, "roles", role, "tasks")
        for name in sorted(os.listdir(tasks_dir)):
            if (role, name) in OTHER_SOURCE:
                continue
            with open(os.path.join(tasks_dir, name)) as fh:
                tasks = yaml.safe_load(fh) or []
            for task in walk(tasks):
                apt = task.get("ansible.builtin.apt")
                if not isinstance(apt, dict) or "name" not in apt:
                    continue
                for package in names_of(apt["name"], defaults):
                    found[package] = apt.get("install_recommends", True)
    return found


def walk(tasks):
    for task in tasks:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from walk(task.get(key) or [])


def test_the_image_holds_exactly_the_packages_of_the_bootstrap_roles():
    wanted = roles_packages()
    assert "docker.io" in wanted and "aide" in wanted, sorted(wanted)
    with_recommends = {p for p, rec in wanted.items() if rec} - LEFT_TO_THE_ROLES
    without = {p for p, rec in wanted.items() if not rec} - LEFT_TO_THE_ROLES
    assert images_sh_list("PACKAGES") == with_recommends
    assert images_sh_list("PACKAGES_NO_RECOMMENDS") == without


def test_only_the_servers_of_the_scenarios_not_about_bootstrapping_use_it():
    uses = {}
    for scenario in os.listdir(os.path.join(ROOT, "molecule")):
        path = os.path.join(ROOT, "molecule", scenario, "molecule.yml")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            platforms = yaml.safe_load(fh)["platforms"]
        for platform in platforms:
            if "bookworm-packages" in platform["image"]:
                uses.setdefault(scenario, set()).add(platform["name"])
    assert "bootstrap" not in uses
    assert set(uses) == {"platform", "backup", "deploy"}, uses
