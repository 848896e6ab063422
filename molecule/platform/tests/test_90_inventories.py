"""The shipped example inventories work as shipped (issue 23, item 2; R61):
this scenario converges inventories/production/group_vars unchanged (linked,
see molecule.yml) and allows in its host_vars only the host, keys, secrets
and what cannot run here; then the staging inventory, the same way, runs
site.yml and a deploy on the same server (last: it moves the apps to the
staging domains)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import yaml
from onebox_molecule import PROJECT, get_json, one_line, run_playbook

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_VARS = os.path.join(HERE, "host_vars", "onebox-platform-target")
# Each key host_vars may set, by reason (main.yml's header says the same).
ALLOWED = {
    "keys": {"base_deploy_user_authorized_keys", "offsite_host_key", "vault_offsite_ssh_key"},
    "host": {"onebox_registry", "offsite_repository", "offsite_wal_target", "offsite_rest_cacert",
             "haproxy_acme_directory",
             "haproxy_acme_ca_bundle"},
    "here": {"postgres_image", "postgres_image_archive", "postgres_redis_image", "postgres_redis_image_archive",
             "docker_daemon_options", "monitoring_method", "monitoring_render_only"},
}  # fmt: skip


def test_the_inventory_is_the_shipped_one_with_only_host_keys_and_secrets_replaced():
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    linked = os.path.realpath(os.path.join(inventory, "group_vars"))
    assert linked == os.path.realpath(os.path.join(PROJECT, "inventories", "production", "group_vars")), linked
    with open(os.path.join(HOST_VARS, "main.yml")) as fh:
        overrides = set(yaml.safe_load(fh))
    allowed = set().union(*ALLOWED.values())
    assert overrides <= allowed, f"not host, keys or secrets: {sorted(overrides - allowed)}"
    # The secrets: exactly the vault_* names vault.yml.example lists.
    with open(os.path.join(PROJECT, "inventories", "production", "group_vars", "all", "vault.yml.example")) as fh:
        example = set(yaml.safe_load(fh))
    with open(os.path.join(HOST_VARS, "vault.yml")) as fh:
        assert fh.read().startswith("$ANSIBLE_VAULT;"), "the test's secrets are kept in Vault, as users keep them"
    with open(os.path.join(linked, "all", "main.yml")) as fh:
        used = set(re.findall(r"\{\{ (vault_\w+) \}\}", fh.read()))
    assert used <= example, f"the inventory uses secrets its example does not list: {sorted(used - example)}"


def test_the_staging_inventory_runs_site_and_a_deploy(target, base_url):
    """inventories/staging/group_vars, unchanged, beside the same host_vars."""
    work = tempfile.mkdtemp(prefix="onebox-staging-")
    try:
        inventory = os.path.join(work, "inventory")
        os.makedirs(inventory)
        shutil.copy(os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(inventory, "hosts.yml"))
        os.symlink(os.path.join(PROJECT, "inventories", "staging", "group_vars"), os.path.join(inventory, "group_vars"))
        os.symlink(os.path.join(HERE, "host_vars"), os.path.join(inventory, "host_vars"))
        site = run_playbook("site.yml", "-l", "production", inventory=inventory, timeout=1800)
        out = one_line(site)
        assert site.returncode == 0, out[-3000:]
        assert "is off:" not in out, re.findall(r"\[WARNING\]: \S+ is off: [^.]*", out)
        deploy = run_playbook("deploy.yml", "-l", "production", "-e", "app=shop", "-e", "version=v2",
                              inventory=inventory, timeout=900)  # fmt: skip
        assert deploy.returncode == 0, one_line(deploy)[-3000:]
        assert get_json(base_url, "shop.staging.example.com")[1]["version"] == "v2"
    finally:
        shutil.rmtree(work, ignore_errors=True)
