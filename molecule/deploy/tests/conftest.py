"""Fixtures shared by the deploy scenario's test modules: the target server
and the address its HAProxy answers on from this machine."""

from __future__ import annotations

import subprocess

import pytest
import testinfra

TARGET = "onebox-deploy-target"


@pytest.fixture(scope="module")
def target():
    return testinfra.get_host(f"docker://{TARGET}")


@pytest.fixture(scope="module")
def base_url():
    ip = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", TARGET],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    return f"http://{ip}"
