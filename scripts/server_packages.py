"""The packages the bootstrap roles install (base, ssh_hardening, firewall,
Docker from Debian), read from their apt tasks and defaults, for the image
the servers of the platform, backup and deploy scenarios start from
(scripts/images.sh). Prints two lines: the packages their tasks install
with recommends, then those installed without.

Left out: Docker's own repository (docker_install_source: docker, which no
scenario uses) and openssh-server, which makes its host keys when installed
(every server of the image would share them)."""

from __future__ import annotations

import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = ("base", "ssh_hardening", "firewall", "docker")
OTHER_SOURCE = {("docker", "install-docker.yml")}
LEFT_TO_THE_ROLES = {"openssh-server"}


def role_defaults(role):
    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) as fh:
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
        if var not in defaults:
            raise SystemExit(f"server_packages.py: cannot resolve {var} from the role's defaults")
        found |= set(defaults[var])
    return found


def walk(tasks):
    for task in tasks:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from walk(task.get(key) or [])


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
                if isinstance(apt, dict) and "name" in apt:
                    for package in names_of(apt["name"], defaults):
                        found[package] = apt.get("install_recommends", True)
    return found


def image_lists():
    """(with recommends, without), each sorted, openssh-server left out."""
    wanted = {p: rec for p, rec in roles_packages().items() if p not in LEFT_TO_THE_ROLES}
    return sorted(p for p, rec in wanted.items() if rec), sorted(p for p, rec in wanted.items() if not rec)


if __name__ == "__main__":
    with_recommends, without = image_lists()
    sys.stdout.write(" ".join(with_recommends) + "\n" + " ".join(without) + "\n")
