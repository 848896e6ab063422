"""The haproxy role's haproxy.cfg for several apps, rendered from the app
model by Ansible, checked with `haproxy -c` and served by a real HAProxy:
each web app its own backend routed by Host (several domains each), workers
left out, unknown hosts on the first app (issue 11, items 1, 2, 6)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import COLLECTIONS, ROOT, Backend, free_port

PLAY = """
- name: Render haproxy.cfg from the app model
  hosts: localhost
  gather_facts: false
  vars_files: ["{root}/roles/haproxy/defaults/main.yml"]
  tasks:
    - name: The web apps of the model
      ansible.builtin.set_fact:
        haproxy_web_apps: >-
          {{{{ haproxy_apps | onebox.platform.apps(routing_only=true) | selectattr('kind', 'equalto', 'web') | list }}}}
    - name: Render
      ansible.builtin.template:
        src: "{root}/roles/haproxy/templates/haproxy.cfg.j2"
        dest: "{out}"
        mode: "0600"
"""


def render(tmp_path, apps, **overrides):
    play = tmp_path / "render.yml"
    out = tmp_path / "haproxy.cfg"
    play.write_text(PLAY.format(root=ROOT, out=out))
    extra = dict(
        haproxy_apps=apps,
        ansible_python_interpreter=sys.executable,
        haproxy_installed_version="2.6.12",
        haproxy_https=False,
        haproxy_socket=str(tmp_path / "admin.sock"),
        haproxy_state_file=str(tmp_path / "server-state"),
        haproxy_metrics_bind=f"127.0.0.1:{free_port()}",
    )
    extra.update(overrides)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(play), "-e", json.dumps(extra)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc, out


def runnable(tmp_path, cfg_path):
    """The rendered file, made to run unprivileged in TMP_PATH: no chroot,
    user or syslog; the maintenance pages where this test writes them."""
    cfg = cfg_path.read_text()
    cfg = re.sub(r"^\s*(chroot|user|group|log /dev/log).*$", "", cfg, flags=re.M)
    cfg = cfg.replace("/etc/haproxy/errors/onebox", str(tmp_path))
    for name in re.findall(r"errorfile 503 \S+/(\S+)-503\.http", cfg):
        (tmp_path / f"{name}-503.http").write_text(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nmaintenance\n"
        )
    path = tmp_path / "run.cfg"
    path.write_text(cfg + f"\n    pidfile {tmp_path}/haproxy.pid\n".replace("\n    pidfile", "\nglobal\n    pidfile"))
    return path


def get(port, host):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["version"]


def wait_answering(port, host, timeout=10):
    """Until the HAProxy just started answers for HOST (or OSError after TIMEOUT s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(port, host)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture()
def platform(tmp_path):
    api, web = Backend("api-v1"), Backend("web-v1")
    apps = [
        {
            "name": "api",
            "domains": ["api.test"],
            "health_path": "/health",
            "blue_port": api.port,
            "green_port": free_port(),
        },
        {
            "name": "web",
            "domains": ["web.test", "www.web.test"],
            "health_path": "/health",
            "blue_port": web.port,
            "green_port": free_port(),
        },
        {"name": "jobs", "kind": "worker"},
    ]
    yield tmp_path, apps
    api.stop()
    web.stop()


def test_several_apps_route_by_host(platform):
    tmp_path, apps = platform
    port = free_port()
    proc, out = render(tmp_path, apps, haproxy_http_port=port)
    assert proc.returncode == 0, proc.stdout[-3000:]
    cfg = out.read_text()
    assert "backend app_api" in cfg and "backend app_web" in cfg and "app_jobs" not in cfg
    assert "-i web.test www.web.test" in cfg
    run_cfg = runnable(tmp_path, out)
    check = subprocess.run(["haproxy", "-c", "-f", str(run_cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    subprocess.run(["haproxy", "-f", str(run_cfg), "-D"], check=True)
    try:
        wait_answering(port, "api.test")
        assert get(port, "api.test") == "api-v1"
        assert get(port, "web.test") == "web-v1"
        assert get(port, "www.web.test:80") == "web-v1"
        assert get(port, "WWW.WEB.TEST") == "web-v1"
        # An unknown host lands on the first app, as with one app before.
        assert get(port, "other.test") == "api-v1"
    finally:
        with open(tmp_path / "haproxy.pid") as fh:
            os.kill(int(fh.read().split()[0]), 15)


@pytest.mark.parametrize(
    "apps,message",
    [
        (
            [
                {"name": "a", "domains": ["x.test"], "health_path": "/h"},
                {"name": "b", "domains": ["x.test"], "health_path": "/h"},
            ],
            "domain x.test is claimed by both 'a' and 'b'",
        ),
        ([{"name": "a", "domains": ["x.test"]}], "a web app needs health_path"),
        ([{"name": "w", "kind": "worker", "domains": ["x.test"]}], "a worker serves no HTTP"),
    ],
)
def test_a_bad_model_renders_nothing(tmp_path, apps, message):
    proc, out = render(tmp_path, apps)
    assert proc.returncode != 0 and message in " ".join(proc.stdout.split()), proc.stdout[-2000:]
    assert not out.exists()


def test_a_sticky_canary_keeps_each_visitor_on_one_version_only_while_it_runs(tmp_path):
    """rollout_sticky: the rendered backend sets a cookie, honoured only while
    release_verify's canary steps run (the map entry), so the full switch
    later moves every visitor (issue 12, item 3)."""
    import http.cookiejar
    import threading

    from conftest import run_module

    blue, green = Backend("v1"), Backend("v2")
    port = free_port()
    canary_map = tmp_path / "canary.map"
    canary_map.write_text("")
    apps = [
        {
            "name": "shop",
            "domains": ["shop.test"],
            "health_path": "/health",
            "blue_port": blue.port,
            "green_port": green.port,
            "rollout_sticky": True,
        }
    ]
    proc, out = render(tmp_path, apps, haproxy_http_port=port, haproxy_canary_map=str(canary_map))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "cookie onebox_shop insert indirect nocache httponly" in out.read_text()
    run_cfg = runnable(tmp_path, out)
    subprocess.run(["haproxy", "-f", str(run_cfg), "-D"], check=True)

    def versions(opener, n=12):
        seen = []
        for _i in range(n):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "shop.test"})
            with opener.open(req, timeout=5) as resp:
                seen.append(json.loads(resp.read())["version"])
        return seen

    try:
        wait_answering(port, "shop.test")
        result = {}

        def canary():
            result["out"] = run_module(
                "release_verify",
                dict(
                    phase="canary",
                    socket=str(tmp_path / "admin.sock"),
                    backend="app_shop",
                    server="green",
                    back_to="blue",
                    steps=[50],
                    hold=3,
                    sticky=True,
                    sticky_map=str(canary_map),
                ),
            )

        thread = threading.Thread(target=canary)
        thread.start()
        from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient, describe_servers
        from conftest import wait_for

        client = RuntimeClient(str(tmp_path / "admin.sock"))
        wait_for(lambda: describe_servers(client, "app_shop")["green"]["weight"] == 50, timeout=20)
        visitor = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        sticky = versions(visitor)
        anonymous = versions(urllib.request.build_opener())
        thread.join()
        rc, res = result["out"]
        assert rc == 0, res
        # Both colours are live at 50 %: a visitor with the cookie stays on one.
        assert len(set(sticky)) == 1, sticky
        assert set(anonymous) == {"v1", "v2"}, anonymous
        # The steps are over (both still live here): the cookie no longer binds.
        assert set(versions(visitor)) == {"v1", "v2"}
    finally:
        with open(tmp_path / "haproxy.pid") as fh:
            os.kill(int(fh.read().split()[0]), 15)
        blue.stop()
        green.stop()


def test_acme_challenges_reach_certbot_and_escape_the_https_redirect(platform):
    """haproxy_acme: /.well-known/acme-challenge/ of every domain goes to
    certbot's port (Let's Encrypt validates over plain HTTP, before any
    certificate exists), while everything else is still redirected to HTTPS."""
    tmp_path, apps = platform
    certbot = Backend("certbot")
    http_port, https_port = free_port(), free_port()
    try:
        proc, out = render(
            tmp_path,
            apps,
            haproxy_http_port=http_port,
            haproxy_https=True,
            haproxy_https_port=https_port,
            haproxy_redirect_https=True,
            haproxy_acme=True,
            haproxy_acme_port=certbot.port,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        certs = tmp_path / "certs"
        certs.mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=api.test"]
            + ["-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "c")],
            check=True,
            capture_output=True,
        )
        (certs / "api.test.pem").write_text((tmp_path / "c").read_text() + (tmp_path / "k").read_text())
        run_cfg = runnable(tmp_path, out)
        run_cfg.write_text(run_cfg.read_text().replace("/etc/haproxy/certs/", f"{certs}/"))
        check = subprocess.run(["haproxy", "-c", "-f", str(run_cfg)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        subprocess.run(["haproxy", "-f", str(run_cfg), "-D"], check=True)
        try:

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args, **kwargs):
                    return None

            opener = urllib.request.build_opener(NoRedirect)

            def fetch(path, host):
                req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", headers={"Host": host})
                try:
                    with opener.open(req, timeout=5) as resp:
                        return resp.status, json.loads(resp.read())["version"]
                except urllib.error.HTTPError as err:
                    return err.code, err.headers.get("Location")

            deadline = time.monotonic() + 10
            while True:
                try:
                    answer = fetch("/.well-known/acme-challenge/token123", "web.test")
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert answer == (200, "certbot")
            assert fetch("/.well-known/acme-challenge/t", "www.web.test") == (200, "certbot")
            assert fetch("/", "web.test") == (301, "https://web.test/")
            assert fetch("/.well-known/other", "api.test") == (301, "https://api.test/.well-known/other")
        finally:
            with open(tmp_path / "haproxy.pid") as fh:
                os.kill(int(fh.read().split()[0]), 15)
    finally:
        certbot.stop()
