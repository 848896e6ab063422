"""No secret of the test inventory reaches output or logs (issue: day-one
failures, item 8): deploy.yml, backup.yml, restore.yml and site.yml run with
-vvv, and neither their output, the release history nor the audit log may
hold the database password, the DATABASE_URL or the webhook token. Files
that hold secrets are readable by root (or the one service that needs
them) only."""

from __future__ import annotations

import os

import pytest
from test_deploy import play

SECRETS = {
    "postgres_password": "molecule-only-password",
    "DATABASE_URL": "postgres://postgres:molecule-only-password@postgres:5432/demo",
    "webhook token": "whk-molecule-secret-7f3a",
    "registry password": "reg-molecule-secret-5e1d",
}


@pytest.mark.parametrize(
    "playbook, extra",
    [
        ("deploy.yml", ["-e", "app_version=v2"]),
        ("backup.yml", []),
        ("restore.yml", []),
    ],
)
def test_verbose_output_holds_no_secret(playbook, extra):
    rc, out, seconds = play(playbook, "-vvv", *extra)
    assert rc == 0, out[-3000:]
    leaked = [name for name, value in SECRETS.items() if value in out]
    print(f"{playbook} -vvv: {len(out)} characters of output in {seconds} s, secrets found: {leaked or 'none'}")
    assert not leaked, f"{playbook} -vvv printed {leaked}"


def test_site_yml_at_vvv_holds_no_secret():
    """Molecule's converge and idempotence runs of site.yml (the first one
    changes everything, the second changes nothing) log at -vvv to a file
    (molecule.yml: ANSIBLE_LOG_PATH, ANSIBLE_LOG_VERBOSITY)."""
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "site-vvv.log")
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    runs = text.count("PLAY [HAProxy, database and apps]")
    # -vvv: each task's module and connection details are in the log.
    assert runs >= 2 and "ESTABLISH DOCKER CONNECTION" in text.upper(), text[:2000]
    leaked = [name for name, value in SECRETS.items() if value in text]
    print(f"site.yml -vvv log: {len(text)} characters, {runs} runs, secrets found: {leaked or 'none'}")
    assert not leaked, f"site.yml -vvv logged {leaked}"


def test_history_and_audit_log_hold_no_secret(target):
    for path in ("/var/lib/onebox/demo/releases.jsonl", "/var/lib/onebox/demo/audit.log"):
        text = target.check_output(f"cat {path}")
        leaked = [name for name, value in SECRETS.items() if value in text]
        assert not leaked, f"{path} holds {leaked}"


@pytest.mark.parametrize(
    "path, owner",
    [
        ("/etc/onebox/demo/app.env", "root"),
        ("/etc/onebox/demo/postgres.env", "root"),
        ("/etc/onebox/backup/demo.json", "root"),
        ("/etc/prometheus/alertmanager.yml", "prometheus"),
    ],
)
def test_files_with_secrets_are_readable_by_their_owner_only(target, path, owner):
    f = target.file(path)
    assert f.exists, path
    assert f.user == owner and f.mode & 0o077 == 0, f"{path}: {f.user}:{f.group} {oct(f.mode)}"
