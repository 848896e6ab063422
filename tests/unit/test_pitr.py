"""module_utils/pitr: the decisions of point-in-time recovery, from pgBackRest's
own output and the release history alone (the Molecule backup scenario runs
them against a real pgBackRest)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import offsite, pitr, release_log

# The shape of `pgbackrest info --output=json` (2.45), trimmed.
INFO = json.dumps(
    [
        {
            "name": "shop-postgres",
            "status": {"code": 0, "message": "ok"},
            "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "00000002000000000000000A"}],
            "backup": [
                {"label": "20261125-063545F", "type": "full", "timestamp": {"start": 1795588545, "stop": 1795588548}},
                {
                    "label": "20261125-063545F_20261126-031500D",
                    "type": "diff",
                    "timestamp": {"start": 1795662900, "stop": 1795662910},
                    "error": False,
                },
            ],
        }
    ]
)


def test_info_is_read_for_the_stanza():
    info = pitr.parse_info(INFO, "shop-postgres")
    assert info["status"] == 0
    assert [b["type"] for b in info["backups"]] == ["full", "diff"]
    assert info["wal_max"] == "00000002000000000000000A"
    assert pitr.parse_info(INFO, "other")["status"] != 0
    with pytest.raises(pitr.PitrError, match="no JSON"):
        pitr.parse_info("ERROR: [055]", "shop-postgres")


def test_full_weekly_else_differential():
    backups = pitr.parse_info(INFO, "shop-postgres")["backups"]
    full_stop = 1795588548
    assert pitr.choose_type(backups, full_stop + 86400) == "diff"
    assert pitr.choose_type(backups, full_stop + 7 * 86400) == "full"
    assert pitr.choose_type([], 0) == "full"
    # A full backup that failed does not count.
    assert pitr.choose_type([dict(backups[0], error=True)], full_stop + 60) == "full"


def test_a_target_before_the_oldest_base_backup_is_refused():
    backups = pitr.parse_info(INFO, "shop-postgres")["backups"]
    pitr.check_target(backups, None)
    pitr.check_target(backups, pitr.parse_time(1795588548 + 1))
    with pytest.raises(pitr.PitrError, match=r"before the oldest base backup ended .*20261125-063545F.*Nothing"):
        pitr.check_target(backups, pitr.parse_time("2000-01-01T00:00:00Z"))
    with pytest.raises(pitr.PitrError, match="in the future"):
        pitr.check_target(backups, pitr.parse_time(time.time() + 3600))
    with pytest.raises(pitr.PitrError, match="no base backup"):
        pitr.check_target([], None)


def test_just_before_a_release():
    history = [
        {"action": "deploy", "version": "v1", "time": "2026-11-25T06:40:00Z"},
        {"action": "deploy", "version": "v2", "time": "2026-11-25T06:45:10Z"},
        {"action": "rollback", "version": "v1", "time": "2026-11-25T06:50:00Z"},
        {"action": "deploy", "version": "v2", "time": "2026-11-25T07:00:00Z"},
        # The same version again (recover.yml deploys the last release): not a going live.
        {"action": "deploy", "version": "v2", "time": "2026-11-25T09:00:00Z", "by": "recover.yml"},
    ]
    # The last time it went live.
    assert pitr.before_release(history, "v2") == dt.datetime(2026, 11, 25, 6, 59, 59, tzinfo=dt.timezone.utc)
    assert pitr.last_release(history) == "v2"
    assert pitr.last_release([]) == ""
    with pytest.raises(pitr.PitrError, match=r"'v9' is not in the release history \(known: v1, v2"):
        pitr.before_release(history, "v9")


@pytest.mark.parametrize(
    "text",
    ["2026-11-25T10:00:00Z", "2026-11-25 10:00:00+00", "2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00", 1795600800],
)
def test_times_in_the_forms_people_type(text):
    assert pitr.parse_time(text) == dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.timezone.utc)
    assert pitr.pg_time(pitr.parse_time(text)) == "2026-11-25 10:00:00+00"


def test_a_bad_time_says_so():
    with pytest.raises(pitr.PitrError, match=r"not a time.*Nothing was changed"):
        pitr.parse_time("yesterday")


def test_metrics():
    info = pitr.parse_info(INFO, "shop-postgres")
    archiver = {
        "archived_count": "12",
        "failed_count": "1",
        "last_archived_time": "1795662000.5",
        "last_failed_time": "0",
        "ready_segments": "2",
    }
    text = pitr.metrics("shop-postgres", info, archiver, 1795662999)
    assert 'onebox_pitr_last_backup_timestamp_seconds{stanza="shop-postgres"} 1795662910' in text
    assert 'onebox_pitr_backups{stanza="shop-postgres"} 2' in text
    assert 'onebox_pitr_wal_failed_count{stanza="shop-postgres"} 1' in text
    assert 'onebox_pitr_wal_ready_segments{stanza="shop-postgres"} 2' in text
    assert 'onebox_pitr_wal_last_archived_timestamp_seconds{stanza="shop-postgres"} 1795662000' in text


def audit(*lines):
    """Audit entries as release_log reads them back."""
    return [release_log.parse_audit_line(line) for line in lines]


HISTORY = [
    {"action": "deploy", "version": "v1", "time": "2026-11-25T06:40:00Z", "colour": "blue"},
    {"action": "deploy", "version": "v2", "time": "2026-11-25T06:45:10Z", "colour": "green"},
]


def test_before_a_release_is_before_its_migration():
    """The release record is written after the migration and the switch: the
    moment is the migrate-start marker written before the migration ran."""
    entries = audit(
        "2026-11-25T06:39:50Z deploy-start version=v1 by=ci",
        "2026-11-25T06:39:55Z migrate-start version=v1 by=ci",
        "2026-11-25T06:45:00Z deploy-start version=v2 by=ci",
        "2026-11-25T06:45:03Z migrate-start version=v2 by=ci",
        "2026-11-25T06:45:10Z deploy-ok from=v1 to=v2 colour=green switch_ms=3 by=ci",
    )
    when, how = pitr.release_start(HISTORY, "v2", entries)
    assert when == dt.datetime(2026, 11, 25, 6, 45, 3, tzinfo=dt.timezone.utc)
    assert how == "migrate-start of v2"
    # What was live just then (what a recovery to it deploys): v1, not v2.
    assert pitr.release_at(HISTORY, when) == "v1"
    assert pitr.release_at(HISTORY, None) == "v2"
    assert pitr.release_at(HISTORY, pitr.parse_time("2026-11-25T06:00:00Z")) == ""


def test_a_deploy_without_a_migration_uses_its_start():
    entries = audit("2026-11-25T06:45:00Z deploy-start version=v2 by=ci")
    assert pitr.release_start(HISTORY, "v2", entries) == (
        dt.datetime(2026, 11, 25, 6, 45, 0, tzinfo=dt.timezone.utc),
        "deploy-start of v2",
    )


def test_an_attempt_that_failed_after_its_migration_counts():
    """v2's first attempt migrated, then failed verification (switched back);
    the second went live: before v2 is before the first migration."""
    entries = audit(
        "2026-11-25T06:42:00Z migrate-start version=v2 by=ci",
        "2026-11-25T06:42:30Z switch-back to=blue from=green version=v2 by=ci",
        "2026-11-25T06:45:03Z migrate-start version=v2 by=ci",
        # A marker of another version, and one of v2 after its record, do not count.
        "2026-11-25T06:44:00Z migrate-start version=v3 by=ci",
        "2026-11-25T06:50:00Z migrate-start version=v2 by=ci",
    )
    assert pitr.before_release(HISTORY, "v2", entries) == dt.datetime(2026, 11, 25, 6, 42, tzinfo=dt.timezone.utc)


def test_markers_of_an_earlier_going_live_do_not_count():
    history = [*HISTORY, {"action": "rollback", "version": "v1", "time": "2026-11-25T06:50:00Z"}]
    history.append({"action": "deploy", "version": "v2", "time": "2026-11-25T07:00:00Z"})
    entries = audit(
        "2026-11-25T06:45:03Z migrate-start version=v2 by=ci", "2026-11-25T06:59:50Z migrate-start version=v2 by=ci"
    )
    assert pitr.before_release(history, "v2", entries) == dt.datetime(2026, 11, 25, 6, 59, 50, tzinfo=dt.timezone.utc)
    # A rollback runs no deploy: one second before its record.
    assert pitr.release_start(history, "v1", entries)[1] == "release record of v1 (no migration marker)"


def test_the_dump_of_a_moment():
    utc = dt.timezone.utc
    dumps = [
        {"name": "shop-20261125T060000Z.dump", "time": dt.datetime(2026, 11, 25, 6, 0, tzinfo=utc), "verified": True},
        {
            "name": "predeploy-shop-20261125T064501Z.dump",
            "time": dt.datetime(2026, 11, 25, 6, 45, 1, tzinfo=utc),
            "verified": True,
        },
        {"name": "shop-20261125T070000Z.dump", "time": dt.datetime(2026, 11, 25, 7, 0, tzinfo=utc), "verified": False},
        {
            "name": "shop-20991125T070000Z.dump",
            "time": dt.datetime(2099, 11, 25, 7, 0, tzinfo=utc),
            "verified": True,
            "future": True,
        },
    ]
    assert pitr.dump_at(dumps, None)["name"] == "predeploy-shop-20261125T064501Z.dump"
    assert pitr.dump_at(dumps, dt.datetime(2026, 11, 25, 6, 45, 3, tzinfo=utc))["name"].startswith("predeploy-")
    assert pitr.dump_at(dumps, dt.datetime(2026, 11, 25, 6, 30, tzinfo=utc))["name"] == "shop-20261125T060000Z.dump"
    assert pitr.dump_at(dumps, dt.datetime(2026, 11, 25, 5, 0, tzinfo=utc)) is None


def test_a_server_serves_when_its_last_release_runs_or_haproxy_sends_it_requests():
    quiet = {"admin_state": "maint", "op_state": "down", "sessions": 0, "total": 0}
    views = [
        {"app": "shop", "kind": "web", "last": HISTORY[-1], "running": {"blue": True, "green": True}, "servers": {}},
        {
            "app": "blog",
            "kind": "web",
            "last": None,
            "running": {},
            "servers": {"blue": dict(quiet, admin_state="ready", op_state="up", total=12), "green": quiet},
        },
        {
            "app": "mailer",
            "kind": "worker",
            "last": {"version": "v1", "colour": "blue"},
            "running": {"blue": False},
            "servers": None,
        },
    ]
    reasons = offsite.serving_reasons(views)
    assert reasons == [
        "shop: its last release v2 runs (shop-green)",
        "blog: HAProxy sends its traffic to blue (12 requests so far)",
    ]
    # A new server: histories restored, nothing started, no traffic.
    fresh = [dict(v, running={}, servers={"blue": quiet}) for v in views]
    assert offsite.serving_reasons(fresh) == []


def test_a_restore_touches_the_apps_whose_data_it_overwrites():
    apps = [
        {
            "name": "shop",
            "database_container": "app-postgres",
            "volumes": ["onebox_shop_uploads"],
            "redis_container": "shop-redis",
        },
        {"name": "blog", "database_container": "blog-db", "volumes": [], "redis_container": ""},
        {"name": "mailer", "database_container": "app-postgres", "volumes": [], "redis_container": ""},
    ]

    def names(found):
        return [a["name"] for a in found]

    assert names(offsite.touched_apps(apps, "restore-db", pitr_container="app-postgres")) == ["shop", "mailer"]
    manifest = {"volumes": {"onebox_shop_uploads": "/x"}, "redis": [{"container": "shop-redis"}]}
    assert names(offsite.touched_apps(apps, "restore-volumes", manifest)) == ["shop"]
    assert names(offsite.touched_apps(apps, "restore-redis", manifest)) == ["shop"]
    assert offsite.touched_apps(apps, "restore-files", manifest) == []
