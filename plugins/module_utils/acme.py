"""ACME certificates handed to HAProxy (used by the haproxy role's
onebox-acme program on the server, and by the tests).

certbot owns /etc/letsencrypt; this file owns what HAProxy reads of it:
/etc/haproxy/certs/DOMAIN.pem (the chain, then the key) and the metrics of
the renewals. A new certificate replaces the loaded one over the Runtime
API (``set ssl cert`` + ``commit ssl cert``): no reload, no connection
dropped. Only when HAProxy does not know that file yet (or the API refuses)
does the caller reload HAProxy, which drops nothing either.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import tempfile

PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----", re.S)


class AcmeError(Exception):
    """A certificate that cannot be handed to HAProxy; the message says why."""


def domain_of_lineage(lineage):
    """certbot's RENEWED_LINEAGE is /etc/letsencrypt/live/NAME; onebox
    issues one certificate per domain with --cert-name DOMAIN."""
    name = os.path.basename(os.path.normpath(lineage)) if lineage else ""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", name):
        raise AcmeError(f"certbot gave no usable lineage ({lineage!r}): run from certbot's --deploy-hook")
    return name


def haproxy_pem(fullchain, privkey):
    """The one file HAProxy loads: the certificate chain, then the key.
    Refuses anything that is not a PEM chain and a PEM key."""
    certs = [m.group(0) for m in PEM_BLOCK.finditer(fullchain) if m.group(1) == "CERTIFICATE"]
    keys = [m.group(0) for m in PEM_BLOCK.finditer(privkey) if m.group(1).endswith("PRIVATE KEY")]
    if not certs:
        raise AcmeError("fullchain.pem holds no certificate")
    if len(keys) != 1:
        raise AcmeError(f"privkey.pem must hold one private key (found {len(keys)})")
    return "\n".join(certs + keys) + "\n"


def write_atomic(path, data, mode=0o640, gid=None):
    """Write the file in the parent folder (same file system, but not the
    certificate folder HAProxy loads whole), then rename it into place:
    HAProxy, or a reload, never reads half a certificate."""
    directory = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".onebox-acme-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, 0, gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def runtime_update(client, path, pem):
    """Replace the certificate HAProxy loaded from ``path`` over the Runtime
    API. Returns (True, "") or (False, HAProxy's words)."""
    out = client.command(f"set ssl cert {path} <<\n{pem.strip()}\n")
    if "Transaction created" not in out and "Transaction updated" not in out:
        client.command(f"abort ssl cert {path}")
        return False, out.strip() or "no answer to 'set ssl cert'"
    out = client.command(f"commit ssl cert {path}")
    if "Success" not in out:
        client.command(f"abort ssl cert {path}")
        return False, out.strip() or "no answer to 'commit ssl cert'"
    return True, ""


def not_after(pem_path, run=subprocess.run):
    """The certificate's expiry as a Unix time (openssl reads it)."""
    proc = run(
        ["openssl", "x509", "-noout", "-enddate", "-in", pem_path],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"notAfter=(.+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise AcmeError(f"openssl cannot read {pem_path}: {proc.stderr.strip() or proc.stdout.strip()}")
    when = datetime.datetime.strptime(m.group(1).strip().replace(" GMT", ""), "%b %d %H:%M:%S %Y")
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp())


def metrics(renew_ok, renew_time, expiries, reload_pending=False):
    """node_exporter textfile lines: the last renewal run's outcome and time,
    whether a reload of HAProxy is due and not done (a new certificate on
    disk that HAProxy does not serve yet, because a deploy lock could not be
    taken), and each served certificate's expiry (``expiries``: domain ->
    Unix time)."""
    lines = [
        "# HELP onebox_acme_renew_success 1 when the last certificate renewal run succeeded, 0 when it failed.",
        "# TYPE onebox_acme_renew_success gauge",
        f"onebox_acme_renew_success {1 if renew_ok else 0}",
        "# HELP onebox_acme_renew_last_run_timestamp_seconds When the last renewal run ended.",
        "# TYPE onebox_acme_renew_last_run_timestamp_seconds gauge",
        f"onebox_acme_renew_last_run_timestamp_seconds {int(renew_time)}",
        "# HELP onebox_acme_reload_pending 1 while a reload of HAProxy is due and not done (deploy lock held).",
        "# TYPE onebox_acme_reload_pending gauge",
        f"onebox_acme_reload_pending {1 if reload_pending else 0}",
        "# HELP onebox_acme_cert_not_after_seconds Expiry of the certificate HAProxy serves for the domain.",
        "# TYPE onebox_acme_cert_not_after_seconds gauge",
    ]
    for domain in sorted(expiries):
        lines.append(f'onebox_acme_cert_not_after_seconds{{domain="{domain}"}} {int(expiries[domain])}')
    return "\n".join(lines) + "\n"
