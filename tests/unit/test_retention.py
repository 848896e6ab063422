"""Property tests of backup retention (R11): hypothesis generates histories."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest
from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import (
    backup_pattern,
    list_backups,
    select_retention,
)
from hypothesis import given, settings
from hypothesis import strategies as st

UTC = dt.timezone.utc
times = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1)).map(
    lambda t: t.replace(microsecond=0, tzinfo=UTC)
)
histories = st.lists(times, min_size=1, max_size=60, unique=True).map(
    lambda ts: [{"name": f"app-{t.strftime('%Y%m%dT%H%M%SZ')}.dump", "time": t} for t in ts]
)
policies = st.fixed_dictionaries(
    {k: st.integers(0, 10) for k in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")}
)


@given(histories, policies)
def test_newest_backup_is_never_pruned(history, policy):
    kept, pruned = select_retention(history, **policy)
    newest = max(history, key=lambda b: b["time"])["name"]
    assert newest in kept and newest not in pruned


@given(histories, policies, st.randoms())
def test_result_does_not_depend_on_input_order(history, policy, rnd):
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert select_retention(history, **policy) == select_retention(shuffled, **policy)


@given(histories, policies)
def test_every_backup_is_either_kept_or_pruned(history, policy):
    kept, pruned = select_retention(history, **policy)
    assert set(kept).isdisjoint(pruned)
    assert set(kept) | set(pruned) == {b["name"] for b in history}


@given(histories, policies)
def test_keep_last_keeps_the_newest_n(history, policy):
    kept = select_retention(history, **policy)[0]
    newest = [b["name"] for b in sorted(history, key=lambda b: b["time"], reverse=True)]
    assert set(newest[: policy["keep_last"]]) <= set(kept)


@given(histories, st.integers(1, 10))
def test_keep_daily_keeps_newest_of_each_recent_day(history, days):
    kept = select_retention(history, keep_daily=days)[0]
    by_day = {}
    for b in sorted(history, key=lambda b: b["time"], reverse=True):
        by_day.setdefault(b["time"].date(), b["name"])
    recent = sorted(by_day, reverse=True)[:days]
    assert {by_day[d] for d in recent} <= set(kept)
    assert len(kept) <= days + 1  # the newest is one of them, or one more


@given(histories)
def test_no_rules_means_no_pruning(history):
    kept, pruned = select_retention(history)
    assert pruned == [] and len(kept) == len(history)


@given(histories, policies, st.data())
def test_protected_names_are_kept(history, policy, data):
    protect = data.draw(st.sampled_from([b["name"] for b in history]))
    kept = select_retention(history, protect=(protect,), **policy)[0]
    assert protect in kept


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAZ0123456789-_.T", min_size=1, max_size=40)


@settings(max_examples=50, deadline=None)
@given(st.lists(names, max_size=15, unique=True), st.lists(times, min_size=1, max_size=5, unique=True))
def test_files_of_other_patterns_are_never_listed(tmp_path_factory, strays, stamps):
    """Only NAME-YYYYmmddTHHMMSSZ.EXT files are listed, so only they can be pruned."""
    d = tmp_path_factory.mktemp("r")
    ours = {f"app-{t.strftime('%Y%m%dT%H%M%SZ')}.dump" for t in stamps}
    for n in ours:
        (d / n).write_text("x")
        (d / f"{n}.sha256").write_text("x")
    pattern = backup_pattern("", "app")
    strays = [s for s in strays if not pattern.match(s) and s not in ours and not s.endswith(".sha256")]
    for s in strays:
        path = d / s
        if not path.exists():
            path.write_text("not a backup")
    listed = {b["name"] for b in list_backups(str(d), "", "app")}
    assert listed == ours
    _kept, pruned = select_retention(list_backups(str(d), "", "app"), keep_last=1)
    assert not set(pruned) & set(strays)
    assert all(os.path.exists(d / s) for s in strays)


# --- backups dated in the future (the clock was ahead, or a file copied in) ----------------

flagged = st.lists(st.tuples(times, st.booleans()), min_size=1, max_size=40, unique_by=lambda x: x[0]).map(
    lambda ts: [{"name": f"app-{t.strftime('%Y%m%dT%H%M%SZ')}.dump", "time": t, "future": future} for t, future in ts]
)


@given(flagged, policies)
def test_backups_dated_in_the_future_are_kept_and_take_no_part(history, policy):
    kept, pruned = select_retention(history, **policy)
    future = [b for b in history if b["future"]]
    present = [b for b in history if not b["future"]]
    assert {b["name"] for b in future} <= set(kept) and not {b["name"] for b in future} & set(pruned)
    # The others are judged exactly as if the future ones were not there (they fill no slot).
    alone = select_retention(present, **policy) if present else ([], [])
    assert kept == alone[0] + [b["name"] for b in sorted(future, key=lambda b: b["time"], reverse=True)]
    assert pruned == alone[1]
    if present:
        newest = max(present, key=lambda b: b["time"])["name"]
        assert kept[0] == newest


def write_backup(directory, name, completed=None, body=b"x"):
    from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import manifest_text, sha256_file

    (directory / name).write_bytes(body)
    digest = sha256_file(str(directory / name))
    text = manifest_text([(digest, name)], completed) if completed else f"{digest}  {name}\n".encode()
    (directory / f"{name}.sha256").write_bytes(text)
    return name


NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def stamp(t):
    return t.strftime("%Y%m%dT%H%M%SZ")


def test_backups_are_ordered_by_their_recorded_time_and_future_ones_come_last(tmp_path):
    hour = dt.timedelta(hours=1)
    # Named in the future, recorded an hour ago (a clock that is right again, a name set by hand).
    renamed = write_backup(tmp_path, f"app-{stamp(NOW + 100 * hour)}.dump", completed=NOW - hour)
    older = write_backup(tmp_path, f"app-{stamp(NOW - 2 * hour)}.dump", completed=NOW - 2 * hour)
    # Taken while the clock was a year ahead: name and record in the future.
    ahead = write_backup(tmp_path, f"app-{stamp(NOW + 8760 * hour)}.dump", completed=NOW + 8760 * hour)
    # Copied in by hand, sha256sum's manifest (no recorded time): its name's time counts.
    copied = write_backup(tmp_path, f"app-{stamp(NOW + 24 * hour)}.dump")
    # Within the tolerance: a clock a little behind another's.
    close = write_backup(tmp_path, f"app-{stamp(NOW + dt.timedelta(minutes=3))}.dump")
    listed = list_backups(str(tmp_path), "", "app", now=NOW)
    assert [b["name"] for b in listed] == [close, renamed, older, ahead, copied]
    assert [b["future"] for b in listed] == [False, False, False, True, True]
    assert [b["recorded"] for b in listed] == [False, True, True, True, False]
    assert listed[1]["time"] == NOW - hour and listed[1]["named"] == NOW + 100 * hour
    kept, pruned = select_retention(listed, keep_last=1)
    assert kept == [close, ahead, copied] and pruned == [renamed, older]


def test_restores_never_pick_a_backup_dated_in_the_future(tmp_path):
    from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import BackupError, latest_backup

    good = write_backup(tmp_path, f"app-{stamp(NOW - dt.timedelta(days=1))}.dump", completed=NOW - dt.timedelta(days=1))
    ahead = write_backup(tmp_path, "app-20990101T000000Z.dump")
    said = []
    assert latest_backup(str(tmp_path), "", "app", warn=said.append, now=NOW) == str(tmp_path / good)
    (warning,) = said
    assert f"{ahead} (2099-01-01T00:00:00Z)" in warning and "Check the clock (timedatectl)" in warning
    os.remove(tmp_path / good)
    with pytest.raises(BackupError, match=r"no verified backup of app .* that is not dated in the future"):
        latest_backup(str(tmp_path), "", "app", now=NOW)
    assert os.path.exists(tmp_path / ahead)


def test_a_manifest_with_its_recorded_time_passes_sha256sum_and_checks(tmp_path):
    from ansible_collections.onebox.platform.plugins.module_utils.pg_backup import check_checksum, manifest_completed

    name = write_backup(tmp_path, "app-20261124T115900Z.dump", completed=NOW, body=b"a dump")
    assert (tmp_path / f"{name}.sha256").read_text().startswith("# onebox-backup completed=2026-11-24T12:00:00Z\n")
    proc = subprocess.run(
        ["sha256sum", "--strict", "-c", f"{name}.sha256"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout == f"{name}: OK\n", proc.stderr
    assert manifest_completed(str(tmp_path / name)) == NOW
    assert len(check_checksum(str(tmp_path / name))) == 64
    # A manifest that is not ours (or damaged) records nothing: the name's time counts.
    (tmp_path / f"{name}.sha256").write_text("x")
    assert manifest_completed(str(tmp_path / name)) is None
    assert list_backups(str(tmp_path), "", "app", now=NOW)[0]["time"] == dt.datetime(2026, 11, 24, 11, 59, tzinfo=UTC)
