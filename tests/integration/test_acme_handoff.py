"""A new certificate handed to a real HAProxy over the Runtime API
(module_utils/acme.py, the code of onebox-acme's deploy hook), and the hook
itself (roles/haproxy/files/onebox_acme.py), whose fallback reload happens
only under every web app's deploy lock.

HAProxy loads a folder of PEM files, as the haproxy role's `crt
/etc/haproxy/certs/` does; a TLS client holds a keep-alive connection
across the swap. The CA here is openssl; the whole path with certbot and
Pebble runs in the Molecule deploy scenario (test_acme.py)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import acme
from ansible_collections.onebox.platform.plugins.module_utils import deploy_lock as dl
from ansible_collections.onebox.platform.plugins.module_utils.haproxy import RuntimeClient
from conftest import ROOT, Backend, free_port, run_program

PROGRAM = os.path.join(ROOT, "roles", "haproxy", "files", "onebox_acme.py")

CFG = """
global
    stats socket {dir}/admin.sock level admin
    pidfile {dir}/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend https
    bind 127.0.0.1:{port} ssl crt {dir}/certs/
    default_backend app
backend app
    server s1 127.0.0.1:{backend}
"""


def make_ca(tmp, name):
    key, crt = tmp / f"{name}.key", tmp / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={name}"]
        + ["-keyout", str(key), "-out", str(crt)],
        check=True,
        capture_output=True,
    )
    return key, crt


def issue(tmp, ca, domain, days, tag):
    """A leaf for DOMAIN signed by CA: (fullchain text, key text)."""
    ca_key, ca_crt = ca
    key, csr, crt = tmp / f"{tag}.key", tmp / f"{tag}.csr", tmp / f"{tag}.crt"
    ext = tmp / f"{tag}.ext"
    ext.write_text(f"subjectAltName=DNS:{domain}\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={domain}"]
        + ["-keyout", str(key), "-out", str(csr)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial"]
        + ["-days", str(days), "-extfile", str(ext), "-out", str(crt)],
        check=True,
        capture_output=True,
    )
    return crt.read_text() + ca_crt.read_text(), key.read_text()


def served(port, domain, ca_file):
    ctx = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=domain) as tls:
        return tls.getpeercert()


@pytest.fixture
def tls_proxy(tmp_path):
    backend = Backend("v1")
    (tmp_path / "certs").mkdir()
    ca = make_ca(tmp_path, "test-ca")
    chain, key = issue(tmp_path, ca, "shop.test", 30, "old")
    (tmp_path / "certs" / "shop.test.pem").write_text(acme.haproxy_pem(chain, key))
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CFG.format(dir=tmp_path, port=port, backend=backend.port))
    subprocess.run(["haproxy", "-f", str(cfg), "-D"], check=True, capture_output=True)
    sock = str(tmp_path / "admin.sock")
    for _i in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    yield {"dir": tmp_path, "port": port, "ca": ca, "socket": sock}
    with open(tmp_path / "haproxy.pid") as fh:
        os.kill(int(fh.read().split()[0]), 15)
    backend.stop()


def test_new_certificate_served_without_dropping_a_connection(tls_proxy):
    tmp, port, ca = tls_proxy["dir"], tls_proxy["port"], tls_proxy["ca"]
    ca_file = str(ca[1])
    before = served(port, "shop.test", ca_file)
    ctx = ssl.create_default_context(cafile=ca_file)
    held = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    held.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="shop.test")
    held.request("GET", "/health", headers={"Host": "shop.test"})
    assert held.getresponse().read()

    chain, key = issue(tmp, ca, "shop.test", 90, "new")
    pem = acme.haproxy_pem(chain, key)
    path = str(tmp / "certs" / "shop.test.pem")
    acme.write_atomic(path, pem, 0o640)
    done, why = acme.runtime_update(RuntimeClient(tls_proxy["socket"]), path, pem)
    assert done, why

    after = served(port, "shop.test", ca_file)
    assert after["serialNumber"] != before["serialNumber"]
    assert after["notAfter"] != before["notAfter"]
    # The connection opened before the swap still answers on the old session.
    for _i in range(3):
        held.request("GET", "/health", headers={"Host": "shop.test"})
        resp = held.getresponse()
        assert resp.status == 200 and resp.read()
    held.close()
    # Only the file is left in the certificate folder (no temp file beside it).
    assert os.listdir(tmp / "certs") == ["shop.test.pem"]
    assert abs(acme.not_after(path) - (time.time() + 90 * 86400)) < 2 * 86400


def test_a_file_haproxy_never_loaded_is_refused_not_half_applied(tls_proxy):
    tmp, ca = tls_proxy["dir"], tls_proxy["ca"]
    chain, key = issue(tmp, ca, "blog.test", 90, "blog")
    pem = acme.haproxy_pem(chain, key)
    path = str(tmp / "certs" / "blog.test.pem")
    done, why = acme.runtime_update(RuntimeClient(tls_proxy["socket"]), path, pem)
    assert not done
    assert "blog.test.pem" in why or "unknown" in why.lower() or "not" in why.lower()
    # Nothing pending: the old certificate of shop.test is untouched.
    out = RuntimeClient(tls_proxy["socket"]).command("show ssl cert")
    assert "*" not in out.split("\n", 1)[-1]


def test_bad_input_is_refused_before_haproxy_sees_it(tmp_path):
    with pytest.raises(acme.AcmeError, match="no certificate"):
        acme.haproxy_pem("garbage", "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(acme.AcmeError, match="one private key"):
        acme.haproxy_pem("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n", "")
    with pytest.raises(acme.AcmeError, match="lineage"):
        acme.domain_of_lineage("")
    assert acme.domain_of_lineage("/etc/letsencrypt/live/shop.test/") == "shop.test"
    with pytest.raises(acme.AcmeError, match="openssl cannot read"):
        (tmp_path / "x.pem").write_text("nope")
        acme.not_after(str(tmp_path / "x.pem"))


def test_metrics_text():
    text = acme.metrics(False, 1700000000, {"b.test": 1800000000, "a.test": 1750000000}, reload_pending=True)
    assert "onebox_acme_renew_success 0" in text and "onebox_acme_reload_pending 1" in text
    assert text.index('domain="a.test"') < text.index('domain="b.test"')
    assert "onebox_acme_renew_last_run_timestamp_seconds 1700000000" in text


# --- onebox-acme hook: a reload only under the deploy locks ---------------------------


def served_name(port, domain, ca_file):
    """The CN of the certificate HAProxy answers DOMAIN with (its default one
    when it has none for DOMAIN)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=domain) as tls:
        return dict(pair[0] for pair in tls.getpeercert()["subject"])["commonName"]


def haproxy_pid(tmp):
    with open(tmp / "haproxy.pid") as fh:
        return int(fh.read().split()[0])


def hook_settings(tls_proxy, lock_wait):
    """onebox-acme's settings as acme.yml writes them, in the test's folder,
    for two web apps; the reload is a real one of the test's HAProxy (-sf)."""
    tmp = tls_proxy["dir"]
    (tmp / "prom").mkdir(exist_ok=True)
    cfg = {
        "domains": ["shop.test", "blog.test"],
        "certs_dir": str(tmp / "certs"),
        "haproxy_socket": tls_proxy["socket"],
        "textfile_dir": str(tmp / "prom"),
        "haproxy_state_file": str(tmp / "server-state"),
        "reload_marker": str(tmp / "reload-due"),
        "lock_wait": lock_wait,
        "locks": [str(tmp / "onebox" / app / "deploy.lock") for app in ("shop", "blog")],
        "state_file": str(tmp / "acme-renew.json"),
        "reload_command": ["sh", "-c", f"haproxy -f {tmp}/haproxy.cfg -D -sf $(cat {tmp}/haproxy.pid)"],
    }
    path = tmp / "acme.json"
    path.write_text(json.dumps(cfg))
    return path, cfg


def renewed(tls_proxy, domain, tag, monkeypatch):
    """certbot's live folder for DOMAIN with a new certificate, named to the hook as certbot does."""
    tmp = tls_proxy["dir"]
    chain, key = issue(tmp, tls_proxy["ca"], domain, 90, tag)
    lineage = tmp / "live" / domain
    lineage.mkdir(parents=True)
    (lineage / "fullchain.pem").write_text(chain)
    (lineage / "privkey.pem").write_text(key)
    monkeypatch.setenv("RENEWED_LINEAGE", str(lineage))


def metrics(tmp):
    text = (tmp / "prom" / "onebox_acme.prom").read_text()
    return dict(
        line.split(" ", 1)
        for line in text.splitlines()
        if line.startswith("onebox_acme_renew_success") or line.startswith("onebox_acme_reload_pending")
    )


def test_the_hook_does_not_reload_while_a_deploy_holds_a_lock(tls_proxy, monkeypatch):
    tmp, port, ca_file = tls_proxy["dir"], tls_proxy["port"], str(tls_proxy["ca"][1])
    settings, cfg = hook_settings(tls_proxy, lock_wait=1)
    # blog.test is new: HAProxy never loaded its file, so only a reload serves it.
    renewed(tls_proxy, "blog.test", "blog", monkeypatch)
    # A deploy of blog runs (this very process: alive, on this machine).
    deploy, _w, _b = dl.acquire(
        cfg["locks"][1], "alice", version="v9", controller=socket.gethostname(), pid=os.getpid()
    )
    before = haproxy_pid(tmp)

    rc, out = run_program(PROGRAM, "--config", str(settings), "hook")
    assert rc == 1, out
    assert "blog.test" in out and "NOT reloaded" in out and "held by alice" in out and "onebox-acme reload" in out
    assert haproxy_pid(tmp) == before, "HAProxy was reloaded under a deploy"
    assert served_name(port, "blog.test", ca_file) == "shop.test"
    # The new certificate waits on disk; the reload is due; monitoring sees it; the deploy's lock is intact.
    assert (tmp / "certs" / "blog.test.pem").exists() and os.path.exists(cfg["reload_marker"])
    assert metrics(tmp) == {"onebox_acme_renew_success": "0", "onebox_acme_reload_pending": "1"}
    assert "held by alice" in json.loads((tmp / "acme-renew.json").read_text())["detail"]
    assert dl.read_holder(cfg["locks"][1])["token"] == deploy["token"]
    assert not os.path.exists(cfg["locks"][0]), "the lock it took first was not released"

    # The deploy ends; the reload left due is done under the locks.
    dl.release(cfg["locks"][1], deploy["token"])
    rc, out = run_program(PROGRAM, "--config", str(settings), "reload")
    assert rc == 0, out
    assert haproxy_pid(tmp) != before
    assert served_name(port, "blog.test", ca_file) == "blog.test"
    assert not os.path.exists(cfg["reload_marker"])
    assert metrics(tmp) == {"onebox_acme_renew_success": "1", "onebox_acme_reload_pending": "0"}
    # The live colours were saved for the new process first; no lock is left behind.
    assert "app" in (tmp / "server-state").read_text()
    assert not any(os.path.exists(path) for path in cfg["locks"])


def test_a_lock_left_by_a_dead_run_here_fails_the_hook_at_once(tls_proxy, monkeypatch):
    tmp = tls_proxy["dir"]
    settings, cfg = hook_settings(tls_proxy, lock_wait=600)
    renewed(tls_proxy, "blog.test", "blog", monkeypatch)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    os.makedirs(cfg["locks"][0])
    dead = {"owner": "onebox", "since": "2026-11-24T10:00:00+00:00", "controller": socket.gethostname()}
    dead.update(pid=int(ended.stdout), id="abc123", token="t")
    with open(os.path.join(cfg["locks"][0], "holder.json"), "w") as fh:
        json.dump(dead, fh)
    before = haproxy_pid(tmp)

    rc, out = run_program(PROGRAM, "--config", str(settings), "hook")
    assert rc == 1 and "has ended" in out and "waited 0 s" in out and "NOT reloaded" in out, out
    assert haproxy_pid(tmp) == before
    assert dl.read_holder(cfg["locks"][0])["id"] == "abc123", "the hook broke a lock unasked"
    assert os.path.exists(cfg["reload_marker"])


def test_a_swap_over_the_runtime_api_needs_no_lock(tls_proxy, monkeypatch):
    tmp, port, ca_file = tls_proxy["dir"], tls_proxy["port"], str(tls_proxy["ca"][1])
    settings, cfg = hook_settings(tls_proxy, lock_wait=1)
    before_cert = served(port, "shop.test", ca_file)
    renewed(tls_proxy, "shop.test", "shop-new", monkeypatch)
    deploy, _w, _b = dl.acquire(cfg["locks"][0], "alice", controller=socket.gethostname(), pid=os.getpid())
    before = haproxy_pid(tmp)
    rc, out = run_program(PROGRAM, "--config", str(settings), "hook")
    assert rc == 0 and "HAProxy serves the new certificate" in out, out
    assert served(port, "shop.test", ca_file)["serialNumber"] != before_cert["serialNumber"]
    assert haproxy_pid(tmp) == before and not os.path.exists(cfg["reload_marker"])
    assert metrics(tmp) == {"onebox_acme_renew_success": "1", "onebox_acme_reload_pending": "0"}
    assert dl.read_holder(cfg["locks"][0])["token"] == deploy["token"]
