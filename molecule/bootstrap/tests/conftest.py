"""Hosts of the bootstrap scenario, reached with `docker exec`."""

import subprocess

import pytest
import testinfra

TARGET = "onebox-bootstrap-target"
CLIENT = "onebox-bootstrap-client"
IMAGE = "onebox-test/busybox:1"


@pytest.fixture(scope="session")
def target():
    return testinfra.get_host(f"docker://{TARGET}")


@pytest.fixture(scope="session")
def client():
    return testinfra.get_host(f"docker://{CLIENT}")


@pytest.fixture(scope="session")
def target_ip():
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", TARGET],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0]


@pytest.fixture(scope="session")
def busybox_image(target):
    """A tiny image for the target's own Docker engine, built from Debian's
    static busybox (no registry is reachable here)."""
    if target.run(f"docker image inspect {IMAGE}").rc != 0:
        target.check_output("apt-get install -y -qq busybox-static >/dev/null")
        target.check_output(
            "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/www; cp /bin/busybox $d/bin/busybox;"
            " for a in sh echo cat httpd; do ln -s busybox $d/bin/$a; done;"
            " echo ok > $d/www/index.html;"
            f" tar -C $d -c . | docker import --change 'CMD [\"/bin/sh\"]' - {IMAGE} >/dev/null"
        )
    return IMAGE
