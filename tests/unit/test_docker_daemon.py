"""module_utils/docker_daemon: daemon.json from the defaults and the
inventory, never with a storage driver that would hide what a running
engine holds (the old demo inventory named vfs; Docker never picks it again
by itself, and a restart without it lost every container it served)."""

from __future__ import annotations

import json

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import docker_daemon

DEFAULTS = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "5"}, "live-restore": True}
VFS_ENGINE = {"Driver": "vfs", "Images": 4, "Containers": 7}


def test_options_merge_over_the_defaults_key_by_key():
    out = docker_daemon.config(DEFAULTS, {"log-opts": {"max-size": "50m"}, "mtu": 1400})
    assert out["config"]["log-opts"] == {"max-size": "50m", "max-file": "5"}
    assert out["config"]["mtu"] == 1400 and out["config"]["live-restore"] is True
    assert out["warnings"] == []
    assert DEFAULTS["log-opts"]["max-size"] == "10m", "the defaults were changed in place"


def test_a_driver_the_file_names_is_kept_while_the_engine_holds_containers():
    current = json.dumps(dict(DEFAULTS, **{"storage-driver": "vfs"}))
    out = docker_daemon.config(DEFAULTS, {}, current, VFS_ENGINE)
    assert out["config"]["storage-driver"] == "vfs"
    assert len(out["warnings"]) == 1 and "keeps storage-driver vfs" in out["warnings"][0]
    # ... and said in the inventory, it is kept without a word.
    out = docker_daemon.config(DEFAULTS, {"storage-driver": "vfs"}, current, VFS_ENGINE)
    assert out["config"]["storage-driver"] == "vfs" and out["warnings"] == []


def test_an_empty_or_stopped_engine_takes_the_inventory_as_it_is():
    current = json.dumps({"storage-driver": "vfs"})
    for engine in ({}, {"Driver": "vfs", "Images": 0, "Containers": 0}):
        out = docker_daemon.config(DEFAULTS, {}, current, engine)
        assert "storage-driver" not in out["config"] and out["warnings"] == []
    out = docker_daemon.config(DEFAULTS, {"storage-driver": "overlay2"}, current, {"Driver": "vfs"})
    assert out["config"]["storage-driver"] == "overlay2"


def test_an_engine_that_picked_its_own_driver_is_left_to_pick_it():
    out = docker_daemon.config(DEFAULTS, {}, json.dumps(DEFAULTS), {"Driver": "overlay2", "Images": 3})
    assert "storage-driver" not in out["config"] and out["warnings"] == []


def test_another_driver_on_an_engine_that_holds_containers_is_refused():
    with pytest.raises(docker_daemon.DaemonConfigError) as err:
        docker_daemon.config(DEFAULTS, {"storage-driver": "overlay2"}, "{}", VFS_ENGINE)
    message = str(err.value)
    assert "4 images and 7 containers in vfs" in message
    assert "storage-driver: vfs" in message and message.endswith("Nothing was changed.")


def test_a_damaged_daemon_json_reads_as_none():
    assert docker_daemon.parse_current("{not json") == {}
    assert docker_daemon.parse_current("[1]") == {}
    assert docker_daemon.parse_current("") == {}
