"""Hosts of the bootstrap scenario, reached with `docker exec`."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from onebox_molecule import container_ip, host

TARGET = "onebox-bootstrap-target"
CLIENT = "onebox-bootstrap-client"
IMAGE = "onebox-test/busybox:1"


@pytest.fixture(scope="session")
def target():
    return host(TARGET)


@pytest.fixture(scope="session")
def client():
    return host(CLIENT)


@pytest.fixture(scope="session")
def target_ip():
    return container_ip(TARGET)


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
