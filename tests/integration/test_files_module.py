"""onebox.platform.files, run as Ansible runs it (no action plugin, so every
content reaches it as content or content_b64): a list of directories and
files put in place in order, what matches left alone, a changed file
replaced by rename, and a failure that says what was written before it."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import subprocess
import sys

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import programs
from conftest import ROOT, run_module

OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
BINARY = bytes(range(256)) + b"\x00\xff\r\n"


def entry(path, **kw):
    return dict(path=str(path), owner=OWNER, group=GROUP, **kw)


def mode_of(path):
    return os.lstat(path).st_mode & 0o7777


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".onebox-")]


def a_tree(tmp_path):
    top = tmp_path / "prog"
    return top, [
        entry(top, state="directory", mode="0750"),
        entry(top / "lib", state="directory"),
        entry(top / "lib" / "engine.py", content="VALUE = 1\n"),
        entry(top / "lib" / "blob.bin", content_b64=base64.b64encode(BINARY).decode("ascii"), mode="0600"),
        entry(top / "run", content='#!/bin/sh\nexec python3 "$@"\n', mode="0755"),
    ]


def test_a_directory_and_files_are_created_in_order_with_their_modes_and_content(tmp_path):
    top, files = a_tree(tmp_path)
    rc, res = run_module("files", dict(files=files))
    assert rc == 0, res
    assert res["changed"] is True
    assert res["changed_paths"] == [f["path"] for f in files]
    assert top.is_dir() and mode_of(top) == 0o750
    assert (top / "lib").is_dir() and mode_of(top / "lib") == 0o755
    assert (top / "lib" / "engine.py").read_text() == "VALUE = 1\n"
    assert mode_of(top / "lib" / "engine.py") == 0o644
    assert (top / "lib" / "blob.bin").read_bytes() == BINARY
    assert mode_of(top / "lib" / "blob.bin") == 0o600
    assert (top / "run").read_bytes() == b'#!/bin/sh\nexec python3 "$@"\n'
    assert mode_of(top / "run") == 0o755
    for path in (top, top / "lib", top / "lib" / "engine.py", top / "run"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert leftovers(top) == [] and leftovers(top / "lib") == []


def test_a_second_run_changes_nothing(tmp_path):
    _top, files = a_tree(tmp_path)
    rc, res = run_module("files", dict(files=files))
    assert rc == 0 and res["changed"], res
    stats = {f["path"]: os.lstat(f["path"]) for f in files}
    rc, res = run_module("files", dict(files=files))
    assert rc == 0, res
    assert res["changed"] is False
    assert res["changed_paths"] == []
    for path, before in stats.items():
        after = os.lstat(path)
        assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (before.st_ino, before.st_mtime_ns, before.st_mode)
    # Check mode and diff mode agree: nothing to do, nothing to show.
    rc, res = run_module("files", dict(files=files), check=True, diff=True)
    assert rc == 0 and res["changed"] is False and res["changed_paths"] == [] and res["diff"] == []


def test_only_the_mode_differs_so_only_the_mode_is_changed(tmp_path):
    path = tmp_path / "settings.conf"
    path.write_text("keep me\n")
    os.chmod(path, 0o600)
    before = os.lstat(path)
    rc, res = run_module("files", dict(files=[entry(path, content="keep me\n", mode="0640")]), diff=True)
    assert rc == 0, res
    assert res["changed"] is True and res["changed_paths"] == [str(path)]
    after = os.lstat(path)
    assert mode_of(path) == 0o640
    assert after.st_ino == before.st_ino
    assert after.st_mtime_ns == before.st_mtime_ns
    assert path.read_text() == "keep me\n"
    (diff,) = res["diff"]
    assert "0600->0640" in diff["after"]


def test_changed_content_is_replaced_atomically(tmp_path):
    path = tmp_path / "onebox.py"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    old_inode = os.lstat(path).st_ino
    # A reader holding the old file still reads the old file whole.
    with open(path) as reader:
        rc, res = run_module("files", dict(files=[entry(path, content="new\n")]))
        assert reader.read() == "old\n"
    assert rc == 0, res
    assert res["changed"] is True and res["changed_paths"] == [str(path)]
    assert path.read_text() == "new\n"
    assert os.lstat(path).st_ino != old_inode
    assert mode_of(path) == 0o644
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onebox.py"]


def test_check_mode_writes_nothing_but_reports_the_paths(tmp_path):
    top, files = a_tree(tmp_path)
    existing = tmp_path / "existing.txt"
    existing.write_text("before\n")
    files.append(entry(existing, content="after\n"))
    rc, res = run_module("files", dict(files=files), check=True)
    assert rc == 0, res
    assert res["changed"] is True
    assert res["changed_paths"] == [f["path"] for f in files]
    assert not top.exists()
    assert existing.read_text() == "before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]


def test_diff_mode_shows_before_and_after_of_a_small_text_file(tmp_path):
    path = tmp_path / "unit.service"
    path.write_text("[Unit]\nDescription=old\n")
    new = tmp_path / "new.txt"
    rc, res = run_module(
        "files",
        dict(files=[entry(path, content="[Unit]\nDescription=new\n"), entry(new, content="hello\n")]),
        diff=True,
    )
    assert rc == 0, res
    changed, created = res["diff"]
    assert changed == dict(
        before_header=str(path),
        after_header=str(path),
        before="[Unit]\nDescription=old\n",
        after="[Unit]\nDescription=new\n",
    )
    assert created["before"] == "" and created["after"] == "hello\n"
    assert created["before_header"] == created["after_header"] == str(new)
    # No diff asked, none given.
    rc, res = run_module("files", dict(files=[entry(path, content="again\n")]))
    assert rc == 0 and "diff" not in res


def test_a_file_under_a_missing_directory_fails_naming_it_and_what_was_written(tmp_path):
    first = tmp_path / "first.txt"
    orphan = tmp_path / "missing" / "orphan.txt"
    after = tmp_path / "after.txt"
    files = [entry(first, content="1\n"), entry(orphan, content="2\n"), entry(after, content="3\n")]
    rc, res = run_module("files", dict(files=files))
    assert rc != 0 and res["failed"], res
    assert str(orphan) in res["msg"]
    assert "directory does not exist" in res["msg"]
    assert f"Written before it: {first}" in res["msg"]
    assert "nothing after it was changed" in res["msg"]
    assert res["changed"] is True and res["changed_paths"] == [str(first)]
    assert first.read_text() == "1\n"
    assert not orphan.parent.exists()
    assert not after.exists()


def test_a_failure_on_the_first_entry_says_nothing_was_written(tmp_path):
    orphan = tmp_path / "missing" / "orphan.txt"
    rc, res = run_module("files", dict(files=[entry(orphan, content="x\n")]))
    assert rc != 0 and res["failed"], res
    assert "Written before it: nothing" in res["msg"]
    assert res["changed"] is False and res["changed_paths"] == []


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(mode="rw-r--r--"), "mode 'rw-r--r--' is not an octal mode"),
        (dict(owner="no-such-user-onebox"), "there is no user 'no-such-user-onebox'"),
        (dict(group="no-such-group-onebox"), "there is no group 'no-such-group-onebox'"),
    ],
    ids=["bad-mode", "unknown-user", "unknown-group"],
)
def test_a_bad_entry_fails_clearly_and_changes_nothing_after_it(tmp_path, bad, words):
    existing = tmp_path / "existing.txt"
    existing.write_text("untouched\n")
    os.chmod(existing, 0o644)
    later = tmp_path / "later.txt"
    files = [
        dict(entry(existing, content="rewritten\n"), **bad),
        entry(later, content="later\n"),
    ]
    for check in (False, True):
        rc, res = run_module("files", dict(files=files), check=check)
        assert rc != 0 and res["failed"], res
        assert str(existing) in res["msg"] and words in res["msg"], res["msg"]
        assert "Written before it: nothing; nothing after it was changed" in res["msg"]
        assert res["changed"] is False and res["changed_paths"] == []
        assert existing.read_text() == "untouched\n" and mode_of(existing) == 0o644
        assert not later.exists()
        assert leftovers(tmp_path) == []


def test_a_bad_directory_mode_creates_no_directory(tmp_path):
    top = tmp_path / "top"
    rc, res = run_module("files", dict(files=[entry(top, state="directory", mode="0o7777777")]))
    assert rc != 0 and "out of range" in res["msg"], res
    assert not top.exists()


def test_src_reaching_the_module_is_refused(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("on the controller\n")
    target = tmp_path / "target.txt"
    rc, res = run_module("files", dict(files=[entry(target, src=str(source))]))
    assert rc != 0 and res["failed"], res
    assert str(target) in res["msg"]
    assert "src reached the module" in res["msg"] and "action plugin" in res["msg"]
    assert not target.exists()


def test_content_and_content_b64_together_are_refused(tmp_path):
    target = tmp_path / "target.txt"
    rc, res = run_module("files", dict(files=[entry(target, content="a", content_b64="YQ==")]))
    assert rc != 0 and "exactly one of" in res["msg"], res
    rc, res = run_module("files", dict(files=[entry(target)]))
    assert rc != 0 and "exactly one of" in res["msg"], res
    assert not target.exists()


def test_bad_base64_is_refused(tmp_path):
    target = tmp_path / "target.bin"
    rc, res = run_module("files", dict(files=[entry(target, content_b64="not base64!")]))
    assert rc != 0 and "content_b64 is not base64" in res["msg"], res
    assert not target.exists()


def test_a_relative_path_is_refused(tmp_path):
    rc, res = run_module("files", dict(files=[entry("relative/file.txt", content="x\n")]))
    assert rc != 0 and res["failed"], res
    assert "'relative/file.txt' is not an absolute path" in res["msg"]
    assert not (tmp_path / "relative").exists()


def test_a_relative_path_after_a_written_file_reports_what_was_written(tmp_path):
    # The other failures name what was written before them (msg, changed,
    # changed_paths); a relative path must too, or a run that wrote a file
    # reports changed=false.
    first = tmp_path / "first.txt"
    files = [entry(first, content="1\n"), entry("relative.txt", content="2\n")]
    rc, res = run_module("files", dict(files=files))
    assert rc != 0 and res["failed"], res
    assert first.read_text() == "1\n"
    assert "not an absolute path" in res["msg"]
    assert res.get("changed") is True, res
    assert res.get("changed_paths") == [str(first)], res
    assert str(first) in res["msg"], res["msg"]


def test_a_directory_where_a_file_is_asked_fails(tmp_path):
    path = tmp_path / "conf"
    path.mkdir()
    (path / "inside").write_text("kept\n")
    rc, res = run_module("files", dict(files=[entry(path, content="x\n")]))
    assert rc != 0 and res["failed"], res
    assert f"{path} is a directory; a file was asked for" in res["msg"]
    assert path.is_dir() and (path / "inside").read_text() == "kept\n"


def test_a_file_where_a_directory_is_asked_fails(tmp_path):
    path = tmp_path / "lib"
    path.write_text("a file\n")
    rc, res = run_module("files", dict(files=[entry(path, state="directory")]))
    assert rc != 0 and f"{path} exists and is not a directory" in res["msg"], res
    assert path.read_text() == "a file\n"


@pytest.mark.parametrize("name", sorted(programs.PROGRAMS))
def test_a_program_installed_flat_through_the_module_imports_its_engines(tmp_path, name):
    """program_files' entries, with src read as the action plugin reads it,
    put the program and its engines in place; they import from there."""
    home = tmp_path / "home"
    sent = []
    for item in programs.files(name, ROOT, home=str(home), command=False):
        item = dict(item, owner=OWNER, group=GROUP)
        src = item.pop("src", None)
        if src is not None:
            with open(src, "rb") as fh:
                item["content_b64"] = base64.b64encode(fh.read()).decode("ascii")
        sent.append(item)
    rc, res = run_module("files", dict(files=sent))
    assert rc == 0 and res["changed"], res
    prog = programs.PROGRAMS[name]
    engines = prog["engines"]
    with open(os.path.join(ROOT, prog["main"][0]), "rb") as fh:
        assert (home / prog["main"][1]).read_bytes() == fh.read()
    assert sorted(p.name for p in home.iterdir()) == sorted([f"{e}.py" for e in engines] + [prog["main"][1]])
    code = f"import sys; sys.path.insert(0, {str(home)!r})\nfor e in {list(engines)!r}: __import__(e)"
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_numeric_mode_is_read_as_yaml_gives_it(tmp_path):
    """An unquoted 0644 in YAML reaches the module as the number 420: that mode, not 0o420."""
    path = tmp_path / "n.txt"
    rc, res = run_module("files", dict(files=[entry(str(path), content="n\n", mode=0o640)]))
    assert rc == 0 and res["changed"], res
    assert mode_of(path) == 0o640


def test_check_mode_refuses_a_file_under_a_directory_nothing_creates(tmp_path):
    listed, unlisted = tmp_path / "listed", tmp_path / "unlisted"
    files = [
        entry(str(listed), state="directory"),
        entry(str(listed / "a.txt"), content="a\n"),
        entry(str(unlisted / "b.txt"), content="b\n"),
    ]
    rc, res = run_module("files", dict(files=files), check=True)
    assert rc != 0 and "its directory does not exist" in res["msg"] and str(unlisted) in res["msg"], res
    assert not listed.exists() and not unlisted.exists()


def test_missing_skip_leaves_an_absent_path_absent_and_fixes_one_that_is_there(tmp_path):
    there, absent = tmp_path / "cron.d", tmp_path / "cron.hourly"
    there.mkdir(mode=0o755)
    os.chmod(there, 0o755)
    files = [entry(p, state="directory", mode="0700", missing="skip") for p in (there, absent)]
    rc, res = run_module("files", dict(files=files), check=True)
    assert rc == 0 and res["changed_paths"] == [str(there)], res
    assert mode_of(there) == 0o755
    rc, res = run_module("files", dict(files=files))
    assert rc == 0 and res["changed_paths"] == [str(there)], res
    assert mode_of(there) == 0o700 and not absent.exists()
    rc, res = run_module("files", dict(files=files))
    assert rc == 0 and res["changed"] is False, res


def test_missing_skip_creates_no_file_even_in_a_directory_the_run_creates(tmp_path):
    top = tmp_path / "new"
    files = [entry(top, state="directory"), entry(top / "f", content="x\n", missing="skip")]
    rc, res = run_module("files", dict(files=files))
    assert rc == 0, res
    assert res["changed_paths"] == [str(top)] and not (top / "f").exists()
