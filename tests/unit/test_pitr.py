"""module_utils/pitr: the decisions of point-in-time recovery, from pgBackRest's
own output and the release history alone (the Molecule backup scenario runs
them against a real pgBackRest)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import pitr

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
