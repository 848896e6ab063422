"""module_utils/offsite: what the prune run may delete from the WAL mirror,
decided from its file list and the indexes the server uploaded. Property
tests (hypothesis generates histories of base backups and server-side
retention): nothing a kept backup needs is ever deleted."""

from __future__ import annotations

from ansible_collections.onebox.platform.plugins.module_utils import offsite
from hypothesis import given, settings
from hypothesis import strategies as st

STANZA = "db"


def seg(n, timeline=1):
    return f"{timeline:08X}{0:08X}{n:08X}"


def label_at(day, kind, full_day=None):
    stamp = f"202611{day:02d}-031500"
    if kind == "full":
        return f"{stamp}F"
    return f"202611{full_day:02d}-031500F_{stamp}{'D' if kind == 'diff' else 'I'}"


def mirror_of(history, server_keep_full, segments_per_day=3):
    """A WAL mirror after a server ran HISTORY (one backup a day: 'full' or
    'diff') with pgBackRest keeping SERVER_KEEP_FULL fulls: every backup and
    segment it ever sent (the server cannot delete), and one info version
    per backup, listing what the server still had."""
    files, versions, backups, last_full = [], [], [], None
    for day, kind in enumerate(history, 1):
        if kind == "diff" and last_full is None:
            kind = "full"
        label = label_at(day, kind, last_full)
        if kind == "full":
            last_full = day
        start = seg(day * segments_per_day)
        backups.append({"label": label, "type": kind, "archive_start": start, "stop": day})
        files.append(f"pgbackrest/backup/{STANZA}/{label}/backup.manifest")
        files.append(f"pgbackrest/backup/{STANZA}/{label}/pg_data/base/1/1.zst")
        files.append(f"pgbackrest/backup/{STANZA}/backup.history/2026/{label}.manifest.gz")
        for n in range(day * segments_per_day, (day + 1) * segments_per_day):
            files.append(f"pgbackrest/archive/{STANZA}/15-1/0000000100000000/{seg(n)}-{'a' * 40}.zst")
        fulls = [b["label"] for b in backups if b["type"] == "full"][-server_keep_full:]
        listed = [b for b in backups if offsite._full_of(b["label"]) in fulls]
        index = offsite.index_of(STANZA, listed, "sid", day)
        versions.append((f"202611{day:02d}T031600Z-{day:012x}", True, index))
    return files, versions, backups


histories = st.lists(st.sampled_from(["full", "diff", "diff"]), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(1, 4), st.integers(1, 4))
def test_nothing_a_kept_backup_needs_is_deleted(history, server_keep, keep_full):
    files, versions, backups = mirror_of(history, server_keep)
    plan = offsite.plan_wal_prune(files, versions, keep_full)
    deleted = {p.rsplit("/", 1)[-1] for p in plan["backups"]}
    kept = set(plan["kept"].get(STANZA, []))
    labels = {b["label"] for b in backups}
    assert deleted | kept <= labels and not deleted & kept
    # What the newest info version lists (what a recovery restores from) stays.
    assert {b["label"] for b in versions[-1][2]["backups"]} <= kept
    # The newest KEEP_FULL fulls stay, and the full of every kept backup.
    fulls = sorted(label for label in labels if label.endswith("F"))
    assert set(fulls[-keep_full:]) <= kept
    assert {offsite._full_of(label) for label in kept} <= kept
    # No segment from the start of the oldest kept backup on is deleted.
    start = min(b["archive_start"] for b in backups if b["label"] in kept)
    gone = [p.rsplit("/", 1)[-1][:24] for p in plan["files"] if "/archive/" in p]
    assert all(name < start for name in gone)
    left = {p.rsplit("/", 1)[-1][:24] for p in files if "/archive/" in p} - set(gone)
    assert all(seg(n) in left for n in range(int(start[-8:], 16), int(max(left)[-8:], 16) + 1))
    # The newest info version is never deleted.
    assert versions[-1][0] not in plan["versions"]
    # Deleted backups lose their history manifest too; kept ones keep theirs.
    for path in plan["files"]:
        if "backup.history" in path:
            assert path.rsplit("/", 1)[-1].split(".")[0] in deleted


def test_the_oldest_backups_and_their_wal_go():
    files, versions, _backups = mirror_of(["full", "diff", "full", "diff", "full"], server_keep_full=2)
    plan = offsite.plan_wal_prune(files, versions, keep_full=2)
    assert [p.rsplit("/", 1)[-1] for p in plan["backups"]] == [label_at(1, "full"), label_at(2, "diff", 1)]
    assert plan["wal_from"] == {STANZA: seg(9)}
    assert sorted(p.rsplit("/", 1)[-1][:24] for p in plan["files"] if "/archive/" in p) == [seg(n) for n in range(3, 9)]
    # The info versions that list only what went.
    assert plan["versions"] == [versions[0][0], versions[1][0]]


def test_without_the_start_of_a_kept_backup_no_wal_is_deleted():
    files, versions, _backups = mirror_of(["full", "full", "full"], server_keep_full=1)
    # The newest index lost (an old mirror, from before the indexes).
    versions = [(name, ok, None) for name, ok, _i in versions]
    plan = offsite.plan_wal_prune(files, versions, keep_full=1)
    assert not [p for p in plan["files"] if "/archive/" in p]
    assert "no WAL of it is deleted" in " ".join(plan["notes"])


def test_an_upload_cut_short_is_not_a_version():
    infos = {"backup/db/backup.info": b"b", "backup/db/backup.info.copy": b"b", "archive/db/archive.info": b"a"}
    name = f"20261125T031600Z-{offsite.info_digest(infos)[:12]}"
    assert offsite.version_valid(name, dict(infos, **{offsite.INDEX: b"{}"}))
    assert not offsite.version_valid(name, {k: v for k, v in infos.items() if "archive" not in k})
    assert not offsite.version_valid(name, dict(infos, **{"backup/db/backup.info": b"changed"}))
    assert not offsite.version_valid("latest", infos)


def test_a_partly_uploaded_version_older_than_a_good_one_goes():
    files, versions, _backups = mirror_of(["full", "full"], server_keep_full=2)
    versions.insert(1, ("20261101T000000Z-000000000000", False, None))
    plan = offsite.plan_wal_prune(files, versions, keep_full=2)
    assert plan["versions"] == ["20261101T000000Z-000000000000"]


def test_a_retention_that_keeps_nothing_is_refused():
    try:
        offsite.plan_wal_prune([], [], 0)
    except offsite.OffsiteError as exc:
        assert "offsite_wal_keep_full" in str(exc)
    else:
        raise AssertionError("keep_full 0 was accepted")


def test_snapshot_times_and_the_clock_check():
    snaps = [
        {"short_id": "a", "time": "2026-11-25T10:00:00.123456789Z"},
        {"short_id": "b", "time": "2026-11-25T11:00:00+01:00"},
        {"short_id": "c", "time": "2099-01-01T00:00:00Z"},
    ]
    assert offsite.snapshot_time(snaps[0]) == offsite.snapshot_time(snaps[1])
    now = offsite.snapshot_time(snaps[0])
    assert [s["short_id"] for s in offsite.future_snapshots(snaps, now)] == ["c"]


def test_passwords_never_reach_a_message():
    text = "Fatal: Get https://box:s3cr%2Ft@host/config: 401; password s3cr/t"
    assert "s3cr" not in offsite.redact(text, ["s3cr/t"])


def test_retention_applied_is_the_newest_marker_or_else_the_oldest_snapshot():
    sid = "11111111-2222-3333-4444-555555555555"
    own = [
        {"time": "2026-11-20T10:00:00Z", "tags": ["onebox", f"server-id:{sid}"]},
        {"time": "2026-11-25T10:00:00Z", "tags": ["onebox", f"server-id:{sid}"]},
    ]
    other = [{"time": "2026-01-01T00:00:00Z", "tags": ["onebox", "server-id:99999999-0000-0000-0000-000000000000"]}]
    assert offsite.retention_applied([], sid) is None
    # Never pruned: it has grown since its oldest snapshot (another server's does not count).
    assert offsite.retention_applied(own + other, sid) == offsite.snapshot_time(own[0])
    marks = [
        {"time": "2026-11-22T03:00:00Z", "tags": ["onebox-prune"]},
        {"time": "2026-11-24T03:00:00Z", "tags": ["onebox-prune"]},
    ]
    assert offsite.retention_applied(own + marks, sid) == offsite.snapshot_time(marks[1])
    state = {"backup": {"ok": True, "last_success": 1, "retention_applied": 1764000000.4}}
    text = offsite.metrics_text(state, {"retention": 691200})
    assert "onebox_offsite_retention_applied_timestamp_seconds 1764000000\n" in text
    assert "onebox_offsite_retention_max_age_seconds 691200\n" in text
    # Alert off (0): the time is still there, the allowed age is not.
    assert "retention_max_age" not in offsite.metrics_text(state, {"retention": 0})
