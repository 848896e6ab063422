"""Hosts of the backup scenario (shared helpers: molecule/shared)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from onebox_molecule import host

TARGET = "onebox-backup-target"


@pytest.fixture(scope="module")
def target():
    return host(TARGET)


@pytest.fixture(scope="module")
def offsite():
    return host("onebox-backup-offsite")
