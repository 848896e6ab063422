"""roles/offsite/files/onebox_dr.py with a real restic (Debian's 0.14): a local
repository (snapshots, check, the metrics the alerts read, the refusals: a
wrong password, another server's repository, a damaged copy), an append-only
endpoint the server cannot delete from (Debian's rclone: `rclone serve restic
--append-only`, TLS and basic auth) with retention by the prune run's own
credentials, and S3 (moto). The Molecule backup scenario runs the same
program against a storage host set up the same way, with volumes, Redis and
pgBackRest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import offsite_storage
import pytest
from ansible_collections.onebox.platform.plugins.module_utils import offsite
from conftest import ROOT, free_port, run_program, wait_for

PROGRAM = os.path.join(ROOT, "roles", "offsite", "files", "onebox_dr.py")

pytestmark = pytest.mark.skipif(not shutil.which("restic"), reason="restic comes with scripts/test.sh setup")


def run(cfg_path, *args):
    return run_program(PROGRAM, "--config", str(cfg_path), *args)


@pytest.fixture
def server(tmp_path):
    """A server's files, its id, password and settings; the repository is a
    local directory (restic's local backend)."""
    data = tmp_path / "data"
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "app.json").write_text('{"a": 1}')
    (data / "state").mkdir()
    (data / "state" / "releases.jsonl").write_text('{"version": "v1"}\n')
    (tmp_path / "password").write_text("correct horse battery staple")
    (tmp_path / "server-id").write_text("11111111-2222-3333-4444-555555555555\n")
    cfg = {
        "repository": str(tmp_path / "repo"),
        "password_file": str(tmp_path / "password"),
        "cache_dir": str(tmp_path / "cache"),
        "paths": [str(data / "etc"), str(data / "state"), str(data / "missing")],
        "volumes": [],
        "redis": [],
        "keep_last": 2,
        "server_id_file": str(tmp_path / "server-id"),
        "stage_dir": str(tmp_path / "stage"),
        "state_dir": str(tmp_path / "state"),
        "metrics_dir": str(tmp_path / "metrics"),
        "max_ages": {"backup": 10800, "check": 1209600, "retention": 691200},
    }
    path = tmp_path / "offsite.json"
    path.write_text(json.dumps(cfg))
    return {"tmp": tmp_path, "cfg": cfg, "path": path, "data": data}


@pytest.fixture
def storage(tmp_path):
    with offsite_storage.running(tmp_path) as box:
        yield box


def rewrite(server, **change):
    cfg = dict(server["cfg"], **change)
    path = server["tmp"] / "changed.json"
    path.write_text(json.dumps(cfg))
    return path


def metric(server, name):
    text = (server["tmp"] / "metrics" / "onebox_offsite.prom").read_text()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def snapshots(repository, password_file, **extra):
    proc = subprocess.run(
        ["restic", "-r", repository, "--no-lock", "snapshots", "--json", *extra.pop("args", [])],
        env=dict(os.environ, RESTIC_PASSWORD_FILE=password_file, **extra),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def prune_settings(server, **change):
    """The prune run's settings: the same repository and password, its own file."""
    cfg = {"repository": server["cfg"]["repository"], "password_file": server["cfg"]["password_file"], "keep_last": 2}
    cfg.update(change)
    path = server["tmp"] / "prune.json"
    path.write_text(json.dumps(cfg))
    return path


def test_snapshot_retention_check_and_fetch(server):
    for n in range(3):
        (server["data"] / "etc" / f"n{n}").write_text(str(n))
        rc, out = run(server["path"], "backup")
        assert rc == 0, out
        assert json.loads(out)["snapshot"]
    assert metric(server, "onebox_offsite_backup_success") == 1
    assert metric(server, "onebox_offsite_backup_last_success_timestamp_seconds") > 0
    assert metric(server, "onebox_offsite_backup_max_age_seconds") == 10800
    # The server never prunes (keep_last=2 in its settings): all three stay...
    snaps = snapshots(server["cfg"]["repository"], server["cfg"]["password_file"])
    assert len(snaps) == 3
    assert all("server-id:11111111-2222-3333-4444-555555555555" in s["tags"] for s in snaps)
    # ...until the prune run (keep_last=2) forgets the oldest.
    rc, out = run(prune_settings(server), "prune", "--dry-run")
    assert rc == 0, out
    assert len(json.loads(out)["restic"]["snapshots_removed"]) == 1
    assert len(snapshots(server["cfg"]["repository"], server["cfg"]["password_file"])) == 3
    # Before any prune, the alerts count from the oldest snapshot.
    assert metric(server, "onebox_offsite_retention_applied_timestamp_seconds") == pytest.approx(
        min(offsite.snapshot_time(s) for s in snaps), abs=1
    )
    assert metric(server, "onebox_offsite_retention_max_age_seconds") == 691200
    rc, out = run(prune_settings(server), "prune")
    assert rc == 0, out
    assert json.loads(out)["restic"]["snapshots_removed"] == [snaps[0]["short_id"]]
    applied = json.loads(out)["retention_applied"]
    assert len(snapshots(server["cfg"]["repository"], server["cfg"]["password_file"], args=["--tag", "onebox"])) == 2
    # The prune run's marker: one snapshot of its own, which no restore sees;
    # a second run keeps only the newest marker.
    assert run(prune_settings(server), "prune")[0] == 0
    marks = snapshots(server["cfg"]["repository"], server["cfg"]["password_file"], args=["--tag", "onebox-prune"])
    assert len(marks) == 1 and marks[0]["tags"] == ["onebox-prune"]
    assert offsite.snapshot_time(marks[0]) >= applied - 1
    # The server's next backup reads it (the metric the alert compares).
    assert run(server["path"], "backup")[0] == 0
    assert metric(server, "onebox_offsite_retention_applied_timestamp_seconds") == pytest.approx(
        offsite.snapshot_time(marks[0]), abs=1
    )
    rc, out = run(server["path"], "check")
    assert rc == 0, out
    assert metric(server, "onebox_offsite_check_success") == 1
    dest = server["tmp"] / "fetched"
    rc, out = run(server["path"], "fetch", str(dest))
    assert rc == 0, out
    manifest = json.loads(out)
    assert manifest["server_id"] == "11111111-2222-3333-4444-555555555555"
    restored = dest / "files" / str(server["data"] / "etc" / "n2").lstrip("/")
    assert restored.read_text() == "2"


def test_a_wrong_password_is_a_clear_error_and_a_metric(server):
    assert run(server["path"], "backup")[0] == 0
    (server["tmp"] / "wrong").write_text("not it")
    rc, out = run(rewrite(server, password_file=str(server["tmp"] / "wrong")), "backup")
    assert rc == 1
    assert "wrong password" in out
    # The same state file: the timer's metric drops to 0 (OffsiteBackupFailing).
    assert metric(server, "onebox_offsite_backup_success") == 0


def test_an_unreachable_repository_is_never_initialised(server):
    rc, out = run(rewrite(server, repository="sftp:nobody@127.0.0.1:/nowhere", ssh_port=1), "backup")
    assert rc == 1
    assert "cannot reach" in out


def test_another_servers_repository_is_refused(server):
    assert run(server["path"], "backup")[0] == 0
    (server["tmp"] / "other-id").write_text("99999999-2222-3333-4444-555555555555\n")
    rc, out = run(rewrite(server, server_id_file=str(server["tmp"] / "other-id")), "backup")
    assert rc == 1
    assert "holds another server's backups" in out and "Nothing was written" in out


def test_a_damaged_copy_fails_before_anything_is_restored(server):
    (server["data"] / "etc" / "big").write_bytes(os.urandom(300_000))
    assert run(server["path"], "backup")[0] == 0
    packs = sorted((server["tmp"] / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack = packs[-1]
    digest = hashlib.sha256(pack.read_bytes()).hexdigest()
    with open(pack, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"tampered")
    assert hashlib.sha256(pack.read_bytes()).hexdigest() != digest
    dest = server["tmp"] / "fetched"
    rc, out = run(server["path"], "fetch", str(dest))
    assert rc == 1, out
    assert not dest.exists() or not any(dest.iterdir())
    rc, out = run(server["path"], "check")
    assert rc == 1, out
    assert metric(server, "onebox_offsite_check_success") == 0


@pytest.fixture
def s3_server():
    """moto_server: the S3 API (buckets, multipart uploads, listings) on
    127.0.0.1, as an S3-compatible storage speaks it."""
    program = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(program):
        pytest.skip("moto_server comes with requirements-dev.txt")
    port = free_port()
    proc = subprocess.Popen(
        [program, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(listening, timeout=30, interval=0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_an_s3_repository(server, s3_server):
    """restic's S3 backend with the keys from the settings' env file: the
    bucket is made by the first snapshot, then check and fetch."""
    keys = server["tmp"] / "s3.env"
    keys.write_text("AWS_ACCESS_KEY_ID=onebox\nAWS_SECRET_ACCESS_KEY=not-a-real-secret\n")
    path = rewrite(server, repository=f"s3:{s3_server}/onebox-backups/box", s3_env_file=str(keys))
    rc, out = run(path, "backup")
    assert rc == 0, out
    rc, out = run(path, "check")
    assert rc == 0, out
    rc, out = run(path, "fetch", str(server["tmp"] / "fetched"))
    assert rc == 0, out
    assert json.loads(out)["server_id"].startswith("11111111")


def test_the_server_adds_snapshots_but_cannot_delete_them(server, storage):
    """Through `rclone serve restic --append-only` (TLS, basic auth): the
    server's own credentials make snapshots and read them back, but cannot
    delete or rewrite a snapshot or a pack (the requests restic forget and
    a tamperer would send); the prune run, with the storage host's own
    access to the repository, applies retention."""
    path = rewrite(server, **storage.server_settings(), keep_last=1)
    for n in range(3):
        (server["data"] / "etc" / f"n{n}").write_text(str(n))
        rc, out = run(path, "backup")
        assert rc == 0, out
    url = storage.rest_repository.replace("https://", f"https://box:{offsite_storage.RREST_PASSWORD}@")
    kept = snapshots(url, server["cfg"]["password_file"], args=["--cacert", str(storage.cert)])
    assert len(kept) == 3
    # The server's credentials try to delete a snapshot (what restic forget
    # sends), and to write over it and over a data pack: refused, all stay.
    names = sorted(p.name for p in (storage.restic_dir / "snapshots").iterdir())
    before = {p: p.read_bytes() for p in storage.restic_dir.rglob("*") if p.is_file() and "locks" not in p.parts}
    assert storage.rest("DELETE", f"snapshots/{names[0]}") == 403
    assert storage.rest("POST", f"snapshots/{names[0]}", data=b"{}") == 403
    pack = max((p for p in before if "data" in p.parts), key=lambda p: p.stat().st_size)
    assert storage.rest("POST", f"data/{pack.name}", data=b"tampered") == 403
    assert storage.rest("DELETE", f"data/{pack.name}") == 403
    assert storage.rest("DELETE", "config") == 403
    assert {p: p.read_bytes() for p in before} == before
    assert len(snapshots(url, server["cfg"]["password_file"], args=["--cacert", str(storage.cert)])) == 3
    # onebox-dr's probe (site.yml runs it) sees the same.
    rc, out = run(path, "probe")
    assert rc == 0, out
    assert json.loads(out)["restic"] is True
    text = (server["tmp"] / "metrics" / "onebox_offsite.prom").read_text()
    assert 'onebox_offsite_append_only{copy="restic"} 1' in text
    # The whole copy still checks and restores with the server's credentials.
    rc, out = run(path, "fetch", str(server["tmp"] / "fetched"))
    assert rc == 0, out
    # No password in anything the program says.
    assert offsite_storage.RREST_PASSWORD not in out
    # The prune run, with the storage host's own access (keep_last=2).
    rc, out = run(prune_settings(server, repository=str(storage.restic_dir)), "prune")
    assert rc == 0, out
    assert len(json.loads(out)["restic"]["snapshots_removed"]) == 1
    cacert = ["--cacert", str(storage.cert)]
    assert len(snapshots(url, server["cfg"]["password_file"], args=[*cacert, "--tag", "onebox"])) == 2
    # ...and left its marker, which the server reads.
    assert len(snapshots(url, server["cfg"]["password_file"], args=[*cacert, "--tag", "onebox-prune"])) == 1
    # The server goes on adding snapshots after the prune.
    rc, out = run(path, "backup")
    assert rc == 0, out


def test_a_rest_endpoint_that_allows_deletion_is_reported(server, tmp_path):
    """rclone serve restic WITHOUT --append-only: the probe says the server's
    credentials can delete (the metric is 0, the role warns)."""
    port = free_port()
    proc = subprocess.Popen(
        ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(tmp_path / "plain")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: socket_open(port), timeout=30, interval=0.1)
        path = rewrite(server, repository=f"rest:http://127.0.0.1:{port}/")
        assert run(path, "backup")[0] == 0
        rc, out = run(path, "probe")
        assert rc == 0, out
        assert json.loads(out)["restic"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_snapshot_dated_in_the_future_stops_the_prune(server):
    """A server whose clock ran ahead (or snapshots added to push the real
    ones out of retention): the prune run deletes nothing and says why."""
    assert run(server["path"], "backup")[0] == 0
    env = dict(os.environ, RESTIC_PASSWORD_FILE=server["cfg"]["password_file"])
    subprocess.run(
        [
            "restic",
            "-r",
            server["cfg"]["repository"],
            "backup",
            "--tag",
            "onebox",
            "--tag",
            "server-id:x",
            "--time",
            "2099-01-01 00:00:00",
            str(server["data"] / "etc"),
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    rc, out = run(prune_settings(server, keep_last=1), "prune")
    assert rc == 1
    assert "dated in the future" in out and "Nothing was deleted" in out
    assert len(snapshots(server["cfg"]["repository"], server["cfg"]["password_file"])) == 2


def socket_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_plan_of_a_recovery_before_a_release(server):
    """onebox-dr plan on a fetched copy (no point-in-time repository): the
    moment is just before v2's migration, the release to deploy is v1 (live
    then), the database comes back from the pre-deploy dump taken just
    before it; bad targets are refused before anything is touched."""
    dest = server["tmp"] / "recover"
    root = dest / "files"
    state = root / "var" / "lib" / "onebox" / "shop"
    state.mkdir(parents=True)
    for line in (
        {"action": "deploy", "version": "v1", "time": "2026-11-25T06:40:00Z", "colour": "blue"},
        {"action": "deploy", "version": "v2", "time": "2026-11-25T06:45:10Z", "colour": "green"},
    ):
        with open(state / "releases.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
    (state / "audit.log").write_text(
        "2026-11-25T06:45:00Z deploy-start version=v2 by=ci\n2026-11-25T06:45:03Z migrate-start version=v2 by=ci\n"
    )
    dumps = root / "var" / "backups" / "onebox" / "shop"
    dumps.mkdir(parents=True)
    for name in ("shop-20261125T060000Z.dump", "predeploy-shop-20261125T064501Z.dump", "shop-20261125T070000Z.dump"):
        (dumps / name).write_bytes(b"PGDMP")
        digest = hashlib.sha256(b"PGDMP").hexdigest()
        (dumps / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    (dest / "manifest.json").write_text(json.dumps({"root": str(root), "server_id": "x", "time": 0}))
    path = rewrite(
        server,
        pitr={"container": "app-postgres"},
        databases=[{"name": "shop", "role": "shop", "container": "app-postgres", "job": "shop", "apps": ["shop"]}],
    )
    rc, out = run(path, "plan", str(dest), "--before-release", "shop:v2")
    assert rc == 0, out
    plan = json.loads(out)
    assert plan["target"].startswith("2026-11-25T06:45:03")
    assert "migrate-start of v2" in plan["target_text"]
    assert plan["deploy"] == [{"app": "shop", "version": "v1"}]
    assert plan["databases"][0]["way"] == "dump"
    assert plan["databases"][0]["dump"].endswith("predeploy-shop-20261125T064501Z.dump")
    # The latest point: the newest dump, the last release.
    plan = json.loads(run(path, "plan", str(dest))[1])
    assert plan["deploy"] == [{"app": "shop", "version": "v2"}] and plan["databases"][0]["dump"].endswith(
        "070000Z.dump"
    )
    for args, said in (
        (["--before-release", "shop:v9"], "'v9' is not in the release history"),
        (["--before-release", "blog:v1"], "app 'blog' has no release history here"),
        (["--time", "2099-01-01T00:00:00Z"], "in the future"),
        (["--time", "2026-11-25T05:00:00Z"], "no verified dump of shop"),
    ):
        rc, out = run(path, "plan", str(dest), *args)
        assert rc == 1 and said in out and "Nothing was changed" in out, out
    # Told to, a database with no copy of that moment is left as it is.
    rc, out = run(path, "plan", str(dest), "--time", "2026-11-25T05:00:00Z", "--keep-uncovered")
    assert rc == 0, out
    assert [(d["name"], d["way"], d["dump"]) for d in json.loads(out)["databases"]] == [("shop", "keep", "")]
