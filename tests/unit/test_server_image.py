"""The servers of the platform, backup and deploy scenarios start from
local/debian:bookworm-packages (scripts/images.sh): the base image with the
packages the bootstrap roles install, as their tasks install them (with or
without recommends). scripts/server_packages.py reads the lists from the
roles; images.sh takes them from it, so there is no second list to drift."""

from __future__ import annotations

import importlib.util
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = importlib.util.spec_from_file_location("server_packages", os.path.join(ROOT, "scripts", "server_packages.py"))
server_packages = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(server_packages)


def test_the_lists_are_the_bootstrap_roles_apt_tasks_as_they_install_them():
    roles = server_packages.roles_packages()
    with_recommends, without = server_packages.image_lists()
    # From defaults (base_packages + base_extra_packages, docker_packages_distro) and literal lists.
    assert {"ca-certificates", "locales", "docker.io", "python3-docker", "fail2ban", "ufw"} <= set(with_recommends)
    # base_hardening_packages and AIDE: install_recommends: false in their tasks.
    assert {"libpam-pwquality", "debsums", "aide", "aide-common"} <= set(without)
    assert not set(with_recommends) & set(without)
    # Every package the roles install is in one list or left out on purpose.
    assert set(roles) == set(with_recommends) | set(without) | server_packages.LEFT_TO_THE_ROLES
    assert "openssh-server" in roles and "openssh-server" not in with_recommends + without


def test_images_sh_takes_the_lists_from_the_script():
    with open(os.path.join(ROOT, "scripts", "images.sh")) as fh:
        text = fh.read()
    assert "scripts/server_packages.py" in text
    assert "PACKAGES=(" not in text, "a second list of packages in images.sh would drift from the roles'"


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
