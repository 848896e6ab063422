"""onebox-acme: certificates from an ACME CA (Let's Encrypt) for HAProxy.

    onebox-acme issue              a certificate for each configured domain that has none
    onebox-acme renew [ARGS...]    certbot renew (ARGS passed on), then the metrics (certbot.timer runs it)
    onebox-acme hook               certbot's --deploy-hook: hand the new certificate to HAProxy
    onebox-acme metrics            the textfile metrics only

certbot answers the HTTP-01 challenge on 127.0.0.1:PORT (--standalone);
HAProxy routes /.well-known/acme-challenge/ of every domain there. A domain
whose issue fails keeps the self-signed certificate the haproxy role made;
a renewal that fails keeps the certificate in use and sets
onebox_acme_renew_success to 0 (alert CertificateRenewalFailed).
Settings: /etc/onebox/acme.json, written by the haproxy role."""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import acme
import haproxy

CONFIG = "/etc/onebox/acme.json"
LIVE = "/etc/letsencrypt/live"
RENEWAL = "/etc/letsencrypt/renewal"
STATE = "/var/lib/onebox/acme-renew.json"
HOOK = "/usr/local/sbin/onebox-acme hook"


def settings():
    with open(CONFIG, encoding="utf-8") as fh:
        return json.load(fh)


def certbot_env(cfg):
    env = dict(os.environ)
    if cfg.get("ca_bundle"):
        # A private CA's directory (Pebble in the tests) is HTTPS with its own root.
        env["REQUESTS_CA_BUNDLE"] = cfg["ca_bundle"]
    return env


def saved_server(domain):
    try:
        with open(os.path.join(RENEWAL, f"{domain}.conf"), encoding="utf-8") as fh:
            for line in fh:
                key, _sep, value = line.partition("=")
                if key.strip() == "server":
                    return value.strip()
    except OSError:
        return None
    return None


def issue_one(cfg, domain):
    """certbot certonly for one domain; returns (status, detail)."""
    have = os.path.exists(os.path.join(LIVE, domain, "fullchain.pem"))
    if have and saved_server(domain) == cfg["server"]:
        return "present", ""
    argv = [
        "certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--standalone",
        "--preferred-challenges",
        "http",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(cfg["http_port"]),
        "--server",
        cfg["server"],
        "--cert-name",
        domain,
        "-d",
        domain,
        "--deploy-hook",
        HOOK,
    ]
    argv += ["--email", cfg["email"]] if cfg.get("email") else ["--register-unsafely-without-email"]
    if have:
        # Another CA than the one it came from (staging -> production).
        argv.append("--force-renewal")
    proc = subprocess.run(argv, capture_output=True, text=True, env=certbot_env(cfg), check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "Saving debug log" not in ln]
        return "failed", " ".join(lines[-4:])[:600]
    return "issued", ""


def served_expiries(cfg):
    out = {}
    for domain in cfg["domains"]:
        path = os.path.join(cfg["certs_dir"], f"{domain}.pem")
        if os.path.exists(path):
            try:
                out[domain] = acme.not_after(path)
            except acme.AcmeError:
                continue
    return out


def write_metrics(cfg):
    directory = cfg.get("textfile_dir")
    if not directory or not os.path.isdir(directory):
        return
    try:
        with open(STATE, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        state = {"ok": True, "time": 0}
    text = acme.metrics(state["ok"], state["time"], served_expiries(cfg))
    acme.write_atomic(os.path.join(directory, "onebox_acme.prom"), text, 0o644)


def record(ok, detail=""):
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    acme.write_atomic(STATE, json.dumps({"ok": ok, "time": int(time.time()), "detail": detail}), 0o644)


def cmd_issue(cfg, _args):
    results = {}
    for domain in cfg["domains"]:
        status, detail = issue_one(cfg, domain)
        results[domain] = {"status": status, "detail": detail}
    write_metrics(cfg)
    print(json.dumps(results))
    return 0


def cmd_renew(cfg, args):
    argv = ["certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=certbot_env(cfg), check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    ok = proc.returncode == 0
    record(ok, "" if ok else (proc.stderr.strip().splitlines() or ["certbot renew failed"])[-1])
    write_metrics(cfg)
    if not ok:
        print(
            "onebox-acme: the renewal failed; HAProxy keeps serving the certificates it has. "
            "See /var/log/letsencrypt/letsencrypt.log.",
            file=sys.stderr,
        )
    return proc.returncode


def cmd_hook(cfg, _args):
    domain = acme.domain_of_lineage(os.environ.get("RENEWED_LINEAGE"))
    live = os.path.join(LIVE, domain)
    with open(os.path.join(live, "fullchain.pem"), encoding="ascii") as fh:
        chain = fh.read()
    with open(os.path.join(live, "privkey.pem"), encoding="ascii") as fh:
        key = fh.read()
    pem = acme.haproxy_pem(chain, key)
    path = os.path.join(cfg["certs_dir"], f"{domain}.pem")
    acme.write_atomic(path, pem, 0o640, grp.getgrnam("haproxy").gr_gid)
    try:
        done, why = acme.runtime_update(haproxy.RuntimeClient(cfg["haproxy_socket"], timeout=10), path, pem)
    except haproxy.HAProxyError as exc:
        done, why = False, str(exc)
    if not done:
        # HAProxy has not loaded that file yet: a reload reads it (and drops nothing).
        print(f"onebox-acme: runtime update of {path} refused ({why}); reloading HAProxy", file=sys.stderr)
        subprocess.run(["systemctl", "reload", "haproxy"], check=True)
    print(f"onebox-acme: {domain}: HAProxy serves the new certificate")
    write_metrics(cfg)
    return 0


def cmd_metrics(cfg, _args):
    write_metrics(cfg)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {"issue": cmd_issue, "renew": cmd_renew, "hook": cmd_hook, "metrics": cmd_metrics}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("onebox-acme: run it as root.", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](settings(), argv[1:])
    except (acme.AcmeError, OSError, KeyError, ValueError) as exc:
        print(f"onebox-acme: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
