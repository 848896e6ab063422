"""Property tests of backup retention (R11): hypothesis generates histories."""

from __future__ import annotations

import datetime as dt
import os

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
