"""playbooks/offsite-prune.yml on this machine (the controller), against a
storage host on loopback that only lets the server add (offsite_storage):
the server's snapshots pile up, the playbook with the prune run's own
access applies offsite_keep_*; --check only says what would go; no secret
reaches its output. The Molecule backup scenario runs it on the storage
host itself, WAL mirror included."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import offsite_storage
import pytest
from conftest import COLLECTIONS, ROOT, run_program

PROGRAM = os.path.join(ROOT, "roles", "offsite", "files", "onebox_dr.py")
PASSWORD = "test-only-restic-password-123"

pytestmark = pytest.mark.skipif(not shutil.which("restic"), reason="restic comes with scripts/test.sh setup")


@pytest.fixture
def storage(tmp_path):
    with offsite_storage.running(tmp_path) as box:
        yield box


def snapshot_count(storage):
    return len(list((storage.restic_dir / "snapshots").iterdir()))


def playbook(inventory, *args):
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), os.path.join(ROOT, "playbooks", "offsite-prune.yml"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1"),
    )
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_the_prune_playbook_applies_retention_with_its_own_access(storage, tmp_path):
    (tmp_path / "password").write_text(PASSWORD)
    (tmp_path / "server-id").write_text("22222222-2222-3333-4444-555555555555\n")
    (tmp_path / "data").mkdir()
    cfg = dict(
        storage.server_settings(),
        password_file=str(tmp_path / "password"),
        cache_dir=str(tmp_path / "cache"),
        paths=[str(tmp_path / "data")],
        server_id_file=str(tmp_path / "server-id"),
        stage_dir=str(tmp_path / "stage"),
    )
    (tmp_path / "offsite.json").write_text(json.dumps(cfg))
    for n in range(3):
        (tmp_path / "data" / "f").write_text(str(n))
        rc, out = run_program(PROGRAM, "--config", str(tmp_path / "offsite.json"), "backup")
        assert rc == 0, out
    assert snapshot_count(storage) == 3
    host = {
        # Never used: every task runs on offsite_prune_host (localhost).
        "ansible_host": "192.0.2.1",
        "onebox_offsite": True,
        "offsite_repository": storage.rest_repository,
        "offsite_password": PASSWORD,
        "offsite_rest_user": offsite_storage.RREST_USER,
        "offsite_rest_password": offsite_storage.RREST_PASSWORD,
        "offsite_rest_cacert": storage.cert.read_text(),
        "offsite_wal_target": "root@127.0.0.1:",
        "offsite_host_key": storage.known_hosts.read_text(),
        "offsite_prune_repository": str(storage.restic_dir),
        "offsite_prune_wal_target": str(storage.wal),
        "offsite_keep_last": 1,
        "offsite_keep_hourly": 0,
        "offsite_keep_daily": 0,
        "offsite_keep_weekly": 0,
        "offsite_keep_monthly": 0,
    }
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"lost-or-alive": host}}}))
    rc, out = playbook(inventory, "--check")
    assert rc == 0, out[-3000:]
    assert "would remove 2 of 3 snapshot(s)" in out, out[-3000:]
    assert snapshot_count(storage) == 3
    rc, out = playbook(inventory)
    assert rc == 0, out[-3000:]
    assert "removed 2 of 3 snapshot(s)" in out and "changed=1" in out, out[-3000:]
    # The one kept, and the run's marker (the server's backups read it).
    assert snapshot_count(storage) == 2
    # The private directory with the credentials is gone.
    assert not list(pathlib.Path(tempfile.gettempdir()).glob("onebox-prune-*"))
    for secret in (PASSWORD, offsite_storage.RREST_PASSWORD):
        assert secret not in out
    # Again: nothing left to do.
    rc, out = playbook(inventory)
    assert rc == 0 and "changed=0" in out, out[-3000:]
    assert snapshot_count(storage) == 2  # a new marker in place of the old one


def test_a_prune_without_credentials_of_its_own_is_refused(tmp_path):
    host = {
        "onebox_offsite": True,
        "offsite_repository": "rest:https://storage.example:8000/box/",
        "offsite_password": PASSWORD,
    }
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"box": host}}}))
    rc, out = playbook(inventory)
    assert rc != 0
    assert "credentials of its own that may delete" in out and "Nothing was deleted" in out
    assert PASSWORD not in out
