"""onebox-acme: certificates from an ACME CA (Let's Encrypt) for HAProxy.

    onebox-acme issue              a certificate for each configured domain that has none
    onebox-acme renew [ARGS...]    certbot renew (ARGS passed on), then the metrics (certbot.timer runs it)
    onebox-acme hook               certbot's --deploy-hook: hand the new certificate to HAProxy
    onebox-acme reload             reload HAProxy under the deploy locks (a reload left due)
    onebox-acme metrics            the textfile metrics only
    onebox-acme --config PATH ...  other settings than /etc/onebox/acme.json

certbot answers the HTTP-01 challenge on 127.0.0.1:PORT (--standalone);
HAProxy routes /.well-known/acme-challenge/ of every domain there. A domain
whose issue fails keeps the self-signed certificate the haproxy role made;
a renewal that fails keeps the certificate in use and sets
onebox_acme_renew_success to 0 (alert CertificateRenewalFailed).

A new certificate replaces the loaded one over the Runtime API. Only when
HAProxy refuses that (it never loaded the file) is HAProxy reloaded, and
then only under every web app's deploy lock, as the haproxy role's reload
does (so a reload never lands in the middle of a switch), after saving the
servers' state. A lock that cannot be taken in lock_wait seconds, or one
left by a run on this server that has ended, means no reload: the new
certificate stays in the certificate folder for the next reload, the
reload marker says one is due (the next site.yml or `onebox-acme reload`
/ `renew` does it), the run fails and the metrics say so
(onebox_acme_reload_pending 1, onebox_acme_renew_success 0).
Settings: /etc/onebox/acme.json, written by the haproxy role."""

from __future__ import annotations

import grp
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("ONEBOX_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import acme
import deploy_lock
import haproxy

CONFIG = "/etc/onebox/acme.json"
LIVE = "/etc/letsencrypt/live"
RENEWAL = "/etc/letsencrypt/renewal"
STATE = "/var/lib/onebox/acme-renew.json"
HOOK = "/usr/local/sbin/onebox-acme hook"
RELOAD = ["systemctl", "reload", "haproxy"]
RELOAD_MARKER = "/var/lib/haproxy/onebox-reload-due"


def settings(path=CONFIG):
    with open(path, encoding="utf-8") as fh:
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


def state_path(cfg):
    return cfg.get("state_file") or STATE


def marker_path(cfg):
    return cfg.get("reload_marker") or RELOAD_MARKER


def read_state(cfg):
    try:
        with open(state_path(cfg), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"ok": True, "time": 0}


def write_metrics(cfg):
    directory = cfg.get("textfile_dir")
    if not directory or not os.path.isdir(directory):
        return
    state = read_state(cfg)
    text = acme.metrics(
        state.get("ok", True),
        state.get("time", 0),
        served_expiries(cfg),
        reload_pending=os.path.exists(marker_path(cfg)),
    )
    acme.write_atomic(os.path.join(directory, "onebox_acme.prom"), text, 0o644)


def record(cfg, ok, detail="", reload_due=False):
    """The outcome of the last run, for the metrics. RELOAD_DUE: it failed
    only because HAProxy could not be reloaded (a reload clears it)."""
    path = state_path(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {"ok": ok, "time": int(time.time()), "detail": detail, "reload_due": reload_due}
    acme.write_atomic(path, json.dumps(state), 0o644)


def mark_reload_due(cfg, why):
    path = marker_path(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    acme.write_atomic(path, f"onebox-acme: {why}\n", 0o644)


def reload_under_locks(cfg, why):
    """Save the servers' state and reload HAProxy holding every web app's
    deploy lock. Returns "" when done, else what stopped it (then nothing
    was reloaded and the reload marker says one is due)."""
    locks = [str(path) for path in cfg.get("locks", [])]
    client = haproxy.RuntimeClient(cfg["haproxy_socket"], timeout=10)
    try:
        with deploy_lock.holding(
            locks,
            "onebox-acme",
            version="haproxy reload",
            message=why,
            wait=float(cfg.get("lock_wait", 600)),
            check_run=deploy_lock.liveness,
            controller=socket.gethostname(),
            pid=os.getpid(),
        ):
            if cfg.get("haproxy_state_file"):
                # A reload keeps the live colours only through this file.
                client.save_state(cfg["haproxy_state_file"])
            proc = subprocess.run(cfg.get("reload_command") or RELOAD, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise haproxy.HAProxyError(
                    f"the reload failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-400:]}"
                )
    except (deploy_lock.LockError, haproxy.HAProxyError, OSError) as exc:
        mark_reload_due(cfg, f"{why}; not reloaded: {exc}")
        return str(exc)
    try:
        os.unlink(marker_path(cfg))
    except FileNotFoundError:
        pass
    return ""


def cmd_issue(cfg, _args):
    results = {}
    for domain in cfg["domains"]:
        status, detail = issue_one(cfg, domain)
        results[domain] = {"status": status, "detail": detail}
    write_metrics(cfg)
    print(json.dumps(results))
    return 0


def cmd_renew(cfg, args):
    # A reload left due (by a hook that could not take the locks, or a
    # site.yml that failed) is done first, under the locks.
    pending = ""
    if os.path.exists(marker_path(cfg)):
        pending = reload_under_locks(cfg, "a reload left due")
    argv = ["certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=certbot_env(cfg), check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    ok = proc.returncode == 0
    detail = "" if ok else (proc.stderr.strip().splitlines() or ["certbot renew failed"])[-1]
    # certbot does not fail when its deploy hook does: the marker tells.
    reload_due = ok and os.path.exists(marker_path(cfg))
    if reload_due:
        ok, detail = False, pending or read_state(cfg).get("detail") or "a reload of HAProxy is due and not done"
    record(cfg, ok, detail, reload_due)
    write_metrics(cfg)
    if not ok:
        if proc.returncode != 0:
            print(
                "onebox-acme: the renewal failed; HAProxy keeps serving the certificates it has. "
                "See /var/log/letsencrypt/letsencrypt.log.",
                file=sys.stderr,
            )
        else:
            print(
                f"onebox-acme: HAProxy was not reloaded, so it does not serve every new certificate: {detail}",
                file=sys.stderr,
            )
        return proc.returncode or 1
    return 0


def cmd_hook(cfg, _args):
    lineage = os.environ.get("RENEWED_LINEAGE")
    domain = acme.domain_of_lineage(lineage)
    with open(os.path.join(lineage, "fullchain.pem"), encoding="ascii") as fh:
        chain = fh.read()
    with open(os.path.join(lineage, "privkey.pem"), encoding="ascii") as fh:
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
        print(
            f"onebox-acme: runtime update of {path} refused ({why}); reloading HAProxy under the deploy locks",
            file=sys.stderr,
        )
        stopped = reload_under_locks(cfg, f"new certificate for {domain}")
        if stopped:
            message = (
                f"{domain}: the new certificate is in {path}, but HAProxy was NOT reloaded to load it: {stopped} "
                "HAProxy keeps serving the certificate it has; the next reload loads the new one: "
                "`sudo onebox-acme reload` once the lock is free (the renewal timer retries too), or site.yml "
                "(with -e deploy_break_lock=true for a lock whose run has ended)."
            )
            record(cfg, False, message, reload_due=True)
            write_metrics(cfg)
            print(f"onebox-acme: {message}", file=sys.stderr)
            return 1
    print(f"onebox-acme: {domain}: HAProxy serves the new certificate")
    write_metrics(cfg)
    return 0


def cmd_reload(cfg, _args):
    stopped = reload_under_locks(cfg, "onebox-acme reload")
    if stopped:
        record(cfg, False, f"HAProxy was NOT reloaded: {stopped}", reload_due=True)
        write_metrics(cfg)
        print(f"onebox-acme: HAProxy was NOT reloaded: {stopped}", file=sys.stderr)
        return 1
    if read_state(cfg).get("reload_due"):
        # That run failed only for want of this reload.
        record(cfg, True, "reloaded by onebox-acme reload")
    write_metrics(cfg)
    print("onebox-acme: HAProxy reloaded under the deploy locks")
    return 0


def cmd_metrics(cfg, _args):
    write_metrics(cfg)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    config = CONFIG
    if len(argv) >= 2 and argv[0] == "--config":
        config, argv = argv[1], argv[2:]
    commands = {"issue": cmd_issue, "renew": cmd_renew, "hook": cmd_hook, "reload": cmd_reload, "metrics": cmd_metrics}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("onebox-acme: run it as root.", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](settings(config), argv[1:])
    except (acme.AcmeError, OSError, KeyError, ValueError) as exc:
        print(f"onebox-acme: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
