"""release_record: appends every release and audit line (identical ones too),
and app_state reads the history back through the same code."""

from __future__ import annotations

import json

from ansible_collections.onebox.platform.plugins.module_utils import release_log
from conftest import run_module


def test_identical_records_are_both_kept(tmp_path):
    history, audit = tmp_path / "app" / "releases.jsonl", tmp_path / "app" / "audit.log"
    args = dict(
        history=str(history),
        release={"action": "deploy", "version": "v2", "time": "2026-11-24T10:00:00Z"},
        audit_log=str(audit),
        action="deploy-ok",
        detail="version=v2  colour=green",
        actor="ci",
    )
    for _i in range(2):
        rc, res = run_module("release_record", args)
        assert rc == 0 and res["changed"], res
    assert release_log.read_releases(str(history)) == [args["release"]] * 2
    lines = audit.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" deploy-ok version=v2 colour=green by=ci")
    assert oct(history.stat().st_mode & 0o777) == "0o640"


def test_check_mode_writes_nothing(tmp_path):
    history = tmp_path / "releases.jsonl"
    rc, res = run_module("release_record", dict(history=str(history), release={"version": "v1"}), check=True)
    assert rc == 0 and res["release"]["version"] == "v1" and "time" in res["release"]
    assert not history.exists()


def test_a_broken_history_line_is_named(tmp_path):
    history = tmp_path / "releases.jsonl"
    history.write_text(json.dumps({"version": "v1"}) + "\n{not json\n")
    try:
        release_log.read_releases(str(history))
    except release_log.ReleaseLogError as exc:
        assert "line 2 is not JSON" in str(exc)
    else:
        raise AssertionError("a broken line was accepted")


def test_the_maintenance_colour_is_set_and_cleared_idempotently(tmp_path):
    path = tmp_path / "maintenance-colour"
    args = dict(maintenance_file=str(path), maintenance="blue")
    rc, res = run_module("release_record", args)
    assert rc == 0 and res["changed"] and path.read_text() == "blue\n"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    # What app_state and the onebox program read back.
    assert release_log.read_maintenance(str(path), ["blue", "green"]) == "blue"
    rc, res = run_module("release_record", args)
    assert rc == 0 and not res["changed"]
    rc, res = run_module("release_record", dict(args, maintenance="green"), check=True)
    assert rc == 0 and res["changed"] and path.read_text() == "blue\n"
    rc, res = run_module("release_record", dict(args, maintenance=""))
    assert rc == 0 and res["changed"] and not path.exists()
    rc, res = run_module("release_record", dict(args, maintenance=""))
    assert rc == 0 and not res["changed"]
