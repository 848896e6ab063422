"""Fixtures shared by the platform scenario's test modules: the target server
and the addresses its HAProxy answers on from this machine, over HTTPS (with
each domain's name as the TLS server name) and plain HTTP (helpers shared by
every scenario: molecule/shared)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from onebox_molecule import container_ip, host

TARGET = "onebox-platform-target"


@pytest.fixture(scope="module")
def target():
    return host(TARGET)


@pytest.fixture(scope="module")
def base_url():
    return f"https://{container_ip(TARGET)}"


@pytest.fixture(scope="module")
def http_url():
    return f"http://{container_ip(TARGET)}"
