"""module_utils/release_log: a torn last line of the release history never
blocks anything and is kept aside; the audit log's user field cannot forge
lines, and parse_audit_line reads back what audit_line writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import unicodedata

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import release_log
from hypothesis import given, settings
from hypothesis import strategies as st

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def line(version, **extra):
    return json.dumps(dict({"action": "deploy", "version": version, "time": "2026-11-24T09:00:00Z"}, **extra))


def history(tmp_path, text):
    path = tmp_path / "releases.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.chmod(path, 0o640)
    return path


def asides(path):
    return sorted(p for p in os.listdir(path.parent) if p.startswith(path.name + release_log.TORN_SUFFIX))


# --- the release history -------------------------------------------------------


def test_a_torn_last_line_is_left_out_and_reported(tmp_path):
    torn = line("v3")[:17]
    path = history(tmp_path, f"{line('v1')}\n{line('v2')}\n{torn}")
    before = path.read_bytes()
    said = []
    assert [r["version"] for r in release_log.read_releases(str(path), said.append)] == ["v1", "v2"]
    (warning,) = said
    assert f"{path} ends with a torn line" in warning and repr(torn) in warning
    assert "keeps it aside" in warning
    # Reading changes nothing, and without WARN it is still left out.
    assert [r["version"] for r in release_log.read_releases(str(path))] == ["v1", "v2"]
    assert path.read_bytes() == before and asides(path) == []


def test_the_next_release_keeps_the_torn_line_aside_and_repairs_the_history(tmp_path):
    torn = line("v3")[:25]
    path = history(tmp_path, f"{line('v1')}\n{line('v2')}\n{torn}")
    inode = path.stat().st_ino
    said = []
    release_log.append_release(str(path), {"action": "deploy", "version": "v4"}, warn=said.append)
    (aside,) = asides(path)
    assert (tmp_path / aside).read_text() == torn
    assert aside.startswith("releases.jsonl.torn-20") and aside.endswith("Z")
    assert [r["version"] for r in release_log.read_releases(str(path), said.append)] == ["v1", "v2", "v4"]
    assert path.read_text().startswith(f"{line('v1')}\n{line('v2')}\n{{")
    (warning,) = said  # the repair's; the history reads clean after it
    assert f"kept aside in {tmp_path / aside}" in warning
    # Rewritten (a new file renamed into place), same mode, no temporary file left.
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / aside).stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == sorted(["releases.jsonl", aside])
    # A second torn write later gets a file of its own.
    with open(path, "a") as fh:
        fh.write('{"action": "dep')
    release_log.append_release(str(path), {"version": "v5"})
    assert len(asides(path)) == 2
    assert [r["version"] for r in release_log.read_releases(str(path))] == ["v1", "v2", "v4", "v5"]


def test_a_torn_multibyte_character_is_a_torn_line(tmp_path):
    whole = json.dumps({"version": "v2", "note": "café"}, ensure_ascii=False).encode()
    path = history(tmp_path, line("v1").encode() + b"\n" + whole[: whole.index(b"\xc3") + 1])
    said = []
    assert [r["version"] for r in release_log.read_releases(str(path), said.append)] == ["v1"]
    assert len(said) == 1
    release_log.append_release(str(path), {"version": "v3"})
    assert [r["version"] for r in release_log.read_releases(str(path))] == ["v1", "v3"]


def test_a_whole_last_line_without_its_newline_is_a_release(tmp_path):
    path = history(tmp_path, f"{line('v1')}\n{line('v2')}")
    said = []
    assert [r["version"] for r in release_log.read_releases(str(path), said.append)] == ["v1", "v2"]
    release_log.append_release(str(path), {"version": "v3"}, warn=said.append)
    assert said == [] and asides(path) == []
    assert [r["version"] for r in release_log.read_releases(str(path))] == ["v1", "v2", "v3"]
    assert path.read_text().count("\n") == 3


@pytest.mark.parametrize(
    "text, number",
    [
        (f"{line('v1')}\n{{not json\n{line('v3')}\n", 2),
        # A bad last line that ends with its newline was written whole: damage too.
        (f"{line('v1')}\n{{not json\n", 2),
        # A torn line that something appended after (no repair) is damage now.
        (f"{line('v1')}\n{line('v2')[:10]}{line('v3')}\n", 2),
    ],
)
def test_a_bad_line_that_is_not_a_torn_last_line_stays_an_error(tmp_path, text, number):
    path = history(tmp_path, text)
    with pytest.raises(release_log.ReleaseLogError, match=rf"line {number} is not JSON: .*nothing was changed"):
        release_log.read_releases(str(path), lambda m: None)


def test_a_missing_history_is_empty_and_appending_creates_it(tmp_path):
    path = tmp_path / "app" / "releases.jsonl"
    assert release_log.read_releases(str(path)) == []
    out = release_log.append_release(str(path), {"version": "v1"})
    assert out["time"] and release_log.read_releases(str(path)) == [out]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


releases = st.lists(
    st.fixed_dictionaries(
        {"version": st.text("abcv0123456789.-", min_size=1, max_size=8), "note": st.text(max_size=12)}
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(releases, st.data())
def test_a_write_cut_anywhere_loses_nothing(tmp_path_factory, written, data):
    """The last record cut at any byte: readers get every whole release,
    the next append keeps the cut text aside and every byte survives."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in written]
    before, last = b"".join(lines[:-1]), lines[-1]
    cut = data.draw(st.integers(1, len(last)), label="cut")
    path = tmp_path_factory.mktemp("h") / "releases.jsonl"
    path.write_bytes(before + last[:cut])
    whole = written if cut >= len(last) - 1 else written[:-1]
    assert release_log.read_releases(str(path), lambda m: None) == whole
    new = release_log.append_release(str(path), {"version": "next"})
    assert release_log.read_releases(str(path)) == [*whole, new]
    kept = b"".join((path.parent / a).read_bytes() for a in asides(path))
    assert kept == (b"" if whole == written else last[:cut])
    assert path.read_bytes().startswith(before)


# --- the audit log ---------------------------------------------------------------


@pytest.mark.parametrize(
    "actor",
    [
        "bob\n2026-11-24T10:00:00Z deploy-ok version=evil by=root",
        "bob\r",
        "bob\x1b[2K",
        "bob\x00",
        "bob\u2028root",
        "\u202eroot",
        "bob\ud800",  # what os.environ makes of a byte that is not UTF-8
        "bob by=root",
    ],
)
def test_an_actor_that_could_forge_audit_lines_is_refused_before_writing(tmp_path, actor):
    path = tmp_path / "audit.log"
    with pytest.raises(release_log.ReleaseLogError, match="the audit log's user field") as exc:
        release_log.append_audit(str(path), "deploy-ok", "version=v1", actor)
    assert "Give a plain name" in str(exc.value)
    assert not path.exists()


@pytest.mark.parametrize("action", ["", "deploy ok", "deploy-ok\nx", "deploy\x1b"])
def test_an_action_must_be_one_plain_word(action):
    with pytest.raises(release_log.ReleaseLogError, match="must be one word"):
        release_log.audit_line(action, "", "ci")


def test_control_characters_in_the_detail_are_escaped_on_one_line():
    out = release_log.audit_line("deploy-ok", "version=v1\n\tcolour=blue\x1b[31m \x00 \u202e", "ci", now=NOW)
    assert out == r"2026-11-24T10:00:00Z deploy-ok version=v1 colour=blue\x1b[31m \x00 \u202e by=ci"
    assert len(out.splitlines()) == 1


def test_parse_audit_line_reads_back_what_audit_line_wrote():
    written = release_log.audit_line("switch-back", "version=v5  errors_5xx=12 by=x", " alice@web1 (onebox) ", NOW)
    entry = release_log.parse_audit_line(written + "\n")
    assert entry == (NOW, "switch-back", "version=v5 errors_5xx=12 by=x", "alice@web1 (onebox)")
    assert (entry.time, entry.action, entry.actor) == (NOW, "switch-back", "alice@web1 (onebox)")
    assert release_log.parse_audit_line(release_log.audit_line("maintenance-on", "", "", NOW)) == (
        NOW,
        "maintenance-on",
        "",
        "unknown",
    )
    assert release_log.audit_line(entry.action, entry.detail, entry.actor, entry.time) == written


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "2026-11-24T10:00:00Z deploy-ok version=v1",  # no by=
        "2026-11-24T10:00:00Z deploy-ok",
        "2026-11-24T10:00:00Z by=ci",  # no action
        "2026-11-24 deploy-ok by=ci",
        "2026-13-24T10:00:00Z deploy-ok by=ci",
        "2026-11-24T10:00:00Z deploy-ok by=",
        "2026-11-24T10:00:00Z deploy-ok version=v1 by=ci\x1b[2K",
        "2026-11-24T10:00:00Z deploy-ok version=v1 by=ci\r",
        "2026-11-24T10:00:00Z deploy-ok version=v1 by=ci\nsecond line",
        "2026-11-24T10:0",  # a torn write
        None,
    ],
)
def test_parse_audit_line_returns_none_for_what_it_cannot_read(text):
    assert release_log.parse_audit_line(text) is None


actions = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Zs", "Cs")), min_size=1, max_size=12)
stamps = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
    lambda t: t.replace(microsecond=0, tzinfo=UTC)
)


@settings(max_examples=300)
@given(actions, st.text(max_size=40), st.text(max_size=30), stamps)
def test_every_line_audit_line_writes_is_one_line_parse_audit_line_reads_back(action, detail, actor, when):
    try:
        written = release_log.audit_line(action, detail, actor, when)
    except release_log.ReleaseLogError:
        name = actor.strip(" ")
        assert " by=" in name or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in name)
        return
    assert len(written.splitlines()) == 1 and "\x00" not in written
    entry = release_log.parse_audit_line(written)
    assert entry == (when, action, entry.detail, actor.strip(" ") or "unknown")
    assert release_log.audit_line(*entry[1:], now=entry.time) == written


@given(st.text(max_size=80))
def test_parse_audit_line_never_raises(text):
    entry = release_log.parse_audit_line(text)
    assert entry is None or entry.time.tzinfo is UTC


def test_an_audit_line_after_a_torn_one_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "audit.log"
    first = release_log.append_audit(str(path), "deploy-start", "version=v1", "ci")
    with open(path, "a") as fh:
        fh.write("2026-11-24T10:00:01Z deploy-o")
    second = release_log.append_audit(str(path), "deploy-ok", "version=v1", "ci")
    lines = release_log.read_audit(str(path))
    assert lines == [first, "2026-11-24T10:00:01Z deploy-o", second]
    assert [release_log.parse_audit_line(x) is None for x in lines] == [False, True, False]
