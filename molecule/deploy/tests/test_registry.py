"""Images from a private registry with credentials (issue 13, item 2).

This scenario's app image is registry.test:5000/onebox/demo: Debian's
docker-registry on the target, TLS from a test CA, basic auth; prepare.yml
pushed every demo version there with skopeo. The password comes from a
Vault-encrypted file (registry-password.vault). Every deploy of the scenario
pulls from it. Here: the digest pinned in the history, a wrong password and
an unknown tag refused before anything changes, and a rollback that pulls
the pinned digest after the tag was moved to another image.
"""

from __future__ import annotations

from test_deploy import get, play, releases

REGISTRY = "registry.test:5000"
REPO = f"{REGISTRY}/onebox/demo"
CERTS = "/etc/docker/certs.d/registry.test:5000"
PASSWORD = "reg-molecule-secret-5e1d"


def registry_digest(target, tag):
    """What the registry says TAG is (Docker-Content-Digest), asked over
    HTTPS with the test CA and the deploy user's credentials."""
    script = (
        "import base64, ssl, sys, urllib.request; "
        f"ctx = ssl.create_default_context(cafile='{CERTS}/ca.crt'); "
        f"req = urllib.request.Request('https://{REGISTRY}/v2/onebox/demo/manifests/' + sys.argv[1], method='HEAD'); "
        "req.add_header('Accept', 'application/vnd.docker.distribution.manifest.v2+json'); "
        f"req.add_header('Authorization', 'Basic ' + base64.b64encode(b'deployer:{PASSWORD}').decode()); "
        "print(urllib.request.urlopen(req, context=ctx).headers['Docker-Content-Digest'])"
    )
    return target.check_output(f'python3 -c "{script}" {tag}').strip()


def push(target, archive_version, tag):
    target.check_output(
        f"skopeo copy --quiet --dest-creds deployer:{PASSWORD} --dest-cert-dir {CERTS} "
        f"docker-archive:/var/tmp/demo-{archive_version}.tar docker://{REPO}:{tag}"
    )


def snapshot(target, base_url):
    """What a refused deploy must leave as it was."""
    return dict(
        version=get(base_url)[1]["version"],
        history=target.check_output("cat /var/lib/onebox/demo/releases.jsonl"),
        # The pre-deploy backups (the scheduled ones come every 30 s here).
        backups=target.check_output("ls /var/backups/onebox/demo | grep predeploy || true"),
        containers=target.check_output(
            "docker ps -a --filter name=demo- --format '{{.Names}} {{.ID}} {{.State}} {{.Image}}'"
        ),
    )


def test_each_release_is_pinned_by_its_registry_digest(target, base_url):
    rc, out, _s = play("deploy.yml", "-e", "app_version=v2")
    assert rc == 0, out[-3000:]
    last = releases(target)[-1]
    assert last["version"] == "v2" and last["image"] == f"{REPO}:v2"
    assert last["repo_digest"] == f"{REPO}@{registry_digest(target, 'v2')}"
    # Every release of this scenario came from the registry, each pinned
    # (the on-server `onebox rollback` records the digest too).
    pulled = [r for r in releases(target) if r.get("image", "").startswith(REPO) and r["action"] != "switch-back"]
    unpinned = [r for r in pulled if not r.get("repo_digest", "").startswith(f"{REPO}@sha256:")]
    assert pulled and not unpinned, unpinned


def test_a_wrong_registry_password_fails_before_anything_changes(target, base_url):
    before = snapshot(target, base_url)
    rc, out, _s = play("deploy.yml", "-e", "app_version=v1", "-e", "app_registry_password=not-the-password")
    assert rc != 0
    assert f"registry {REGISTRY} refused the login of user deployer" in out, out[-3000:]
    assert "Nothing was changed" in out
    assert "not-the-password" not in out and PASSWORD not in out
    assert snapshot(target, base_url) == before


def test_an_unknown_tag_fails_before_anything_changes(target, base_url):
    before = snapshot(target, base_url)
    rc, out, _s = play("deploy.yml", "-e", "app_version=v99")
    assert rc != 0
    assert f"cannot pull {REPO}:v99 from {REGISTRY}" in out, out[-3000:]
    assert "Nothing was changed" in out
    assert snapshot(target, base_url) == before


def test_a_rollback_pulls_the_pinned_digest_when_the_tag_has_moved(target, base_url):
    rc, out, _s = play("deploy.yml", "-e", "app_version=v1")
    assert rc == 0, out[-3000:]
    pinned = next(r for r in reversed(releases(target)) if r["version"] == "v2")
    # The standby colour's v2 container and every local copy of v2 are gone,
    # and the tag v2 now names another image (v6's): only the digest in the
    # history still leads to the v2 that was deployed.
    target.run("docker rm -f $(docker ps -aq --filter label=onebox_version=v2) 2>/dev/null")
    target.check_output(f"docker image rm -f {REPO}:v2 {pinned['repo_digest']} || true")
    push(target, "v6", "v2")
    try:
        assert registry_digest(target, "v2") != pinned["repo_digest"].split("@")[1]
        rc, out, _s = play("rollback.yml", "-e", "rollback_to=v2")
        assert rc == 0, out[-3000:]
        assert {get(base_url)[1]["version"] for _i in range(20)} == {"v2"}
        last = releases(target)[-1]
        assert last["action"] == "rollback" and last["version"] == "v2"
        assert last["repo_digest"] == pinned["repo_digest"]
        assert last["digest"] == pinned["digest"]
    finally:
        push(target, "v2", "v2")
    print(f"rolled back to {pinned['repo_digest']}")
    # v1 was left by a rollback, so no later rollback would go back to it;
    # deployed again, it counts again (the next tests roll back to it).
    rc, out, _s = play("deploy.yml", "-e", "app_version=v1")
    assert rc == 0, out[-3000:]
