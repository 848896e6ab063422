"""module_utils/releases: the rollback target, from the history alone."""

from __future__ import annotations

from ansible_collections.onebox.platform.plugins.module_utils.releases import rollback_target


def deploy(v):
    return {"action": "deploy", "version": v}


def rollback(to, frm):
    return {"action": "rollback", "version": to, "previous_version": frm}


def test_previous_release():
    assert rollback_target([deploy("v1"), deploy("v2")], "v2") == "v1"


def test_rolling_back_twice_does_not_roll_forward():
    history = [deploy("v1"), deploy("v2"), rollback("v1", "v2")]
    assert rollback_target(history, "v1") == ""
    history = [deploy("v0"), deploy("v1"), deploy("v2"), rollback("v1", "v2")]
    assert rollback_target(history, "v1") == "v0"


def test_a_rolled_back_release_deployed_again_counts_again():
    history = [deploy("v1"), deploy("v2"), rollback("v1", "v2"), deploy("v2"), deploy("v3")]
    assert rollback_target(history, "v3") == "v2"


def test_empty_and_first_release():
    assert rollback_target([], "") == ""
    assert rollback_target([deploy("v1")], "v1") == ""


def test_keep_the_newest_distinct_versions_and_what_runs():
    from ansible_collections.onebox.platform.plugins.module_utils.releases import keep_versions

    history = ["v1", "v2", "v3", "v2", "v4", "v5"]
    assert keep_versions(history, 3) == ["v2", "v4", "v5"]
    # A rolled-back v2 deployed again counts as new; what the colours run stays whatever its age.
    assert keep_versions(history, 2, ["v1", "v6"]) == ["v1", "v4", "v5", "v6"]
    assert keep_versions(history, 0, ["v5"]) == ["v5"]
    assert keep_versions([], 5, ["", "v1"]) == ["v1"]
