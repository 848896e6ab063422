"""Helpers every Molecule scenario's tests share: the hosts (reached with
`docker exec`), a container's address, and ansible-playbook run against the
scenario's inventory from the project. Each scenario's tests/conftest.py
puts this directory on sys.path."""

from __future__ import annotations

import os
import subprocess

import testinfra

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host(name):
    """A testinfra host for the container NAME."""
    return testinfra.get_host(f"docker://{name}")


def container_ip(name):
    """The first address of the container NAME on its Docker networks."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0]


def ansible_env(**extra):
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{PROJECT}/.ansible/collections",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        **extra,
    )


def playbook_argv(playbook, *args):
    """ansible-playbook on the scenario's inventory; PLAYBOOK is a path, or a
    name under playbooks/."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    path = playbook if os.path.isabs(playbook) else f"{PROJECT}/playbooks/{playbook}"
    return ["ansible-playbook", "-i", inventory, path, *args]


def run_playbook(playbook, *args, timeout=900, **env):
    """Run it to the end; returns the CompletedProcess (never raises on failure)."""
    return subprocess.run(
        playbook_argv(playbook, *args),
        env=ansible_env(**env),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(proc):
    """A run's output, whitespace folded, for substring checks."""
    return " ".join((proc.stdout + proc.stderr).split())
