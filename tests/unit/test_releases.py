"""module_utils/releases: the rollback target, from the history alone."""

from __future__ import annotations

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import releases
from ansible_collections.onebox.platform.plugins.module_utils.releases import ReleaseError, choose, rollback_target


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


def test_choose_a_rollback_target_and_the_fast_path():
    history = [deploy("v1"), dict(deploy("v2"), backup="/b/predeploy-v2.dump")]
    running_v1 = {"running": True, "version": "v1"}
    out = choose("rollback", "", history, "v2", running_v1)
    assert out == {"version": "v1", "standby_ready": True, "leaving": history[1], "pinned": ""}
    assert choose("rollback", "", history, "v2", {"running": False, "version": "v1"})["standby_ready"] is False
    assert choose("deploy", "v1", history, "v2", running_v1)["standby_ready"] is False
    # Its container runs v1 with an older environment: v1 is started again, not switched to.
    stale = dict(running_v1, env_current=False)
    assert choose("rollback", "", history, "v2", stale)["standby_ready"] is False


def test_choose_refuses_clearly():
    with pytest.raises(ReleaseError, match=r"version v9 is not in the release history \(v1, v2\)"):
        choose("rollback", "v9", [deploy("v1"), deploy("v2")], "v2", {})
    with pytest.raises(ReleaseError, match="no release before v1 that was not itself rolled back"):
        choose("rollback", "", [deploy("v1")], "v1", {})
    with pytest.raises(ReleaseError, match="a deploy needs a version"):
        choose("deploy", "", [], "", {})


def test_a_rollback_pulls_the_digest_its_version_was_deployed_from():
    repo = "registry.example.com/you/shop"
    history = [
        {"action": "deploy", "version": "v1", "repo_digest": f"{repo}@sha256:aaa"},
        {"action": "deploy", "version": "v2", "repo_digest": f"{repo}@sha256:bbb"},
        # v1 pushed again under the same tag and deployed: the newest record wins.
        {"action": "deploy", "version": "v1", "repo_digest": f"{repo}@sha256:ccc"},
        {"action": "deploy", "version": "v3"},
    ]
    standby = {"running": False, "version": ""}
    assert choose("rollback", "v1", history, "v3", standby)["pinned"] == f"{repo}@sha256:ccc"
    assert choose("rollback", "v2", history, "v3", standby)["pinned"] == f"{repo}@sha256:bbb"
    # Loaded from an archive (no registry digest recorded): the tag is used.
    history.append({"action": "deploy", "version": "v4"})
    assert choose("rollback", "v3", history, "v4", standby)["pinned"] == ""
    # A deploy names its tag; nothing is pinned.
    assert choose("deploy", "v2", history, "v4", standby)["pinned"] == ""


def _stamp(seconds_ago, now=1_800_000_000):
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - seconds_ago))


NOW = 1_800_000_000
DEPLOY_V2 = {"action": "deploy", "version": "v2", "colour": "green", "previous_colour": "blue"}


@pytest.mark.parametrize(
    "last, live, seconds, expected",
    [
        # Within its time after the deploy's switch: the release it left.
        (dict(DEPLOY_V2, switched_at=_stamp(10)), "green", 300, "blue"),
        # Past it, or no time at all.
        (dict(DEPLOY_V2, switched_at=_stamp(300)), "green", 300, ""),
        (dict(DEPLOY_V2, switched_at=_stamp(1)), "green", 0, ""),
        # No switched_at (a record from before it): the record's time.
        (dict(DEPLOY_V2, time=_stamp(10)), "green", 300, "blue"),
        (dict(DEPLOY_V2, time="garbage"), "green", 300, ""),
        # The deploy's colour is not live (switched back, maintenance).
        (dict(DEPLOY_V2, switched_at=_stamp(10)), "blue", 300, ""),
        (dict(DEPLOY_V2, switched_at=_stamp(10)), "", 300, ""),
        # A rollback: the colour behind it would be the release rolled back from.
        (
            {"action": "rollback", "version": "v1", "colour": "blue", "previous_colour": "green", "time": _stamp(1)},
            "blue",
            300,
            "",
        ),
        # A first deploy has nothing behind it.
        (
            {"action": "deploy", "version": "v1", "colour": "blue", "previous_colour": "", "time": _stamp(1)},
            "blue",
            300,
            "",
        ),
        (
            {"action": "deploy", "version": "v1", "colour": "blue", "previous_colour": "blue", "time": _stamp(1)},
            "blue",
            300,
            "",
        ),
    ],
)
def test_fallback_colour(last, live, seconds, expected):
    history = [{"action": "deploy", "version": "v1", "colour": "blue", "time": _stamp(3600)}, last]
    assert releases.fallback_colour(history, live, NOW, seconds) == expected


def test_no_history_no_fallback():
    assert releases.fallback_colour([], "green", NOW, 300) == ""
