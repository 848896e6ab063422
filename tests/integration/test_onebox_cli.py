"""The on-server onebox program (roles/app/files/onebox_cli.py) with real
Docker containers: a torn last line of the release history is a warning
and a rollback goes on; a SUDO_USER that would forge audit lines stops it
before anything is done."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import release_log
from conftest import ROOT

IMAGE = "local/debian:bookworm"  # scripts/images.sh base
PROGRAM = os.path.join(ROOT, "roles", "app", "files", "onebox_cli.py")
LIB = os.path.join(ROOT, "plugins", "module_utils")
# The program as installed (module_utils beside it), its state and settings under the test's directory.
WRAPPER = """
import importlib.util, sys
lib, state, etc, config, program = sys.argv[1:6]
sys.path.insert(0, lib)
import apps
apps.STATE_ROOT, apps.CONFIG_ROOT = state, etc
spec = importlib.util.spec_from_file_location("onebox_cli", program)
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)
cli.CONFIG = config
sys.exit(cli.main(sys.argv[6:]))
"""


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def worker(tmp_path):
    """A worker app on a test server: <app>-blue runs v2, <app>-green holds v1
    (stopped); its history says so."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        pytest.fail(f"{IMAGE} is missing: run scripts/images.sh base")
    name = f"cli{uuid.uuid4().hex[:8]}"
    for colour, version, verb in (("blue", "v2", "run"), ("green", "v1", "create")):
        docker(
            verb,
            *(["-d"] if verb == "run" else []),
            "--name",
            f"{name}-{colour}",
            "--label",
            f"onebox_version={version}",
            IMAGE,
            "sleep",
            "600",
        )
    state, etc = tmp_path / "state" / name, tmp_path / "etc" / name
    state.mkdir(parents=True)
    etc.mkdir(parents=True)
    (etc / "app.json").write_text(json.dumps({"kind": "worker", "stop_timeout": 1}))
    (tmp_path / "onebox.json").write_text(json.dumps({"health_timeout": 20}))
    history = state / "releases.jsonl"
    for colour, version in (("green", "v1"), ("blue", "v2")):
        release_log.append_release(str(history), {"action": "deploy", "version": version, "colour": colour})
    yield name, state
    subprocess.run(["docker", "rm", "-f", f"{name}-blue", f"{name}-green"], capture_output=True, check=False)


def onebox(tmp_path, *args, sudo_user="alice"):
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "USER")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WRAPPER,
            LIB,
            str(tmp_path / "state"),
            str(tmp_path / "etc"),
            str(tmp_path / "onebox.json"),
            PROGRAM,
            *args,
        ],
        capture_output=True,
        text=True,
        env=dict(env, SUDO_USER=sudo_user),
        check=False,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_a_torn_history_line_is_reported_and_a_rollback_goes_on(tmp_path, worker):
    name, state = worker
    history = state / "releases.jsonl"
    torn = '{"action": "deploy", "colour": "gre'
    with open(history, "a") as fh:
        fh.write(torn)
    rc, out, err = onebox(tmp_path, "status", name)
    assert rc == 0, err
    assert f"onebox: warning: {history} ends with a torn line" in err
    assert "rollback target: v1" in out
    rc, out, err = onebox(tmp_path, "rollback", name)
    assert rc == 0, err
    assert f"{name}: rolled back from v2 to v1" in out
    (aside,) = [p for p in os.listdir(state) if p.startswith("releases.jsonl.torn-")]
    assert (state / aside).read_text() == torn
    assert f"kept aside in {state / aside}" in err
    rows = release_log.read_releases(str(history))
    assert [(r["action"], r["version"]) for r in rows] == [("deploy", "v1"), ("deploy", "v2"), ("rollback", "v1")]
    assert rows[-1]["by"] == f"alice@{socket.gethostname()} (onebox)"
    (entry,) = [release_log.parse_audit_line(x) for x in release_log.read_audit(str(state / "audit.log"))]
    assert entry.action == "rollback-ok" and entry.actor == f"alice@{socket.gethostname()} (onebox)"
    assert "from=v2 to=v1" in entry.detail
    assert docker("inspect", "-f", "{{.State.Running}}", f"{name}-green") == "true"


@pytest.mark.parametrize(
    "sudo_user, code",
    [("bob\n2026-11-24T10:00:00Z rollback-ok to=v9 by=root", "U+000A"), ("bob\x1b[1A", "U+001B")],
)
def test_a_sudo_user_that_would_forge_audit_lines_changes_nothing(tmp_path, worker, sudo_user, code):
    name, state = worker
    before = sorted(os.listdir(state)), (state / "releases.jsonl").read_bytes()
    for args in (("rollback", name), ("maintenance", name, "on")):
        rc, _out, err = onebox(tmp_path, *args, sudo_user=sudo_user)
        assert rc == 2
        assert err.startswith("onebox: SUDO_USER is not a plain name:") and code in err
        assert err.rstrip().endswith("Nothing was changed.")
        assert (sorted(os.listdir(state)), (state / "releases.jsonl").read_bytes()) == before  # no lock, no audit
    assert docker("inspect", "-f", "{{.State.Running}}", f"{name}-blue") == "true"


def test_a_standby_started_with_older_credentials_is_not_switched_to(tmp_path, worker):
    """After site.yml moved the app to credentials of its own, the stopped
    colour still holds v1 with the old ones: onebox refuses to start it as it
    is and says what does (rollback.yml starts v1 again with the env file)."""
    name, state = worker
    (tmp_path / "etc" / name / "app.env").write_text("# site.yml\nDATABASE_URL=postgres://cli:new@postgres:5432/cli\n")
    before = (state / "releases.jsonl").read_bytes()
    rc, out, err = onebox(tmp_path, "rollback", name)
    assert rc == 2, out
    assert "runs v1 with an older environment" in err and "playbooks/rollback.yml" in err
    assert err.rstrip().endswith("Nothing was changed.")
    assert "new" not in err  # the env file's values are never printed
    assert (state / "releases.jsonl").read_bytes() == before
    assert docker("inspect", "-f", "{{.State.Running}}", f"{name}-green") == "false"
    assert docker("inspect", "-f", "{{.State.Running}}", f"{name}-blue") == "true"
