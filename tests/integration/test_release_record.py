"""release_record: appends every release and audit line (identical ones too),
and app_state reads the history back through the same code."""

from __future__ import annotations

import json

from ansible_collections.onebox.platform.plugins.module_utils import release_log
from conftest import run_module


def warnings(res):
    """The module's warnings as text (ansible-core 2.19 returns each as an event)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in res.get("warnings", [])]


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


def test_a_torn_last_line_is_kept_aside_and_the_release_appended(tmp_path):
    history = tmp_path / "releases.jsonl"
    torn = '{"action": "deploy", "vers'
    history.write_text(json.dumps({"version": "v1"}) + "\n" + torn)
    args = dict(history=str(history), release={"action": "deploy", "version": "v2"})
    rc, res = run_module("release_record", args)
    assert rc == 0, res
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("releases.jsonl.torn-")]
    assert aside.read_text() == torn
    (warning,) = warnings(res)
    assert f"kept aside in {aside}" in warning
    assert [r["version"] for r in release_log.read_releases(str(history))] == ["v1", "v2"]


def test_an_actor_that_would_forge_audit_lines_changes_nothing(tmp_path):
    paths = {n: tmp_path / n for n in ("releases.jsonl", "audit.log", "maintenance-colour")}
    args = dict(
        history=str(paths["releases.jsonl"]),
        release={"action": "deploy", "version": "v2"},
        audit_log=str(paths["audit.log"]),
        action="deploy-ok",
        detail="version=v2",
        actor="ci\n2026-11-24T10:00:00Z rollback-ok to=v1 by=root",
        maintenance_file=str(paths["maintenance-colour"]),
        maintenance="blue",
    )
    for check in (False, True):
        rc, res = run_module("release_record", args, check=check)
        assert rc != 0 and res["failed"]
        assert "holds a newline or other control character (U+000A)" in res["msg"]
        assert res["msg"].endswith("Nothing was changed.")
        assert not any(p.exists() for p in paths.values())
