# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Telling people how a release went: one message per outcome, to
Slack-style webhooks and by e-mail, with the verification window's figures.

A notice that cannot be sent is reported, never raised: it must not change
the outcome of a deploy. Addresses and passwords never appear in what is
returned (a webhook URL is a credential). Mail over TLS (STARTTLS or SSL)
verifies the server's certificate and host name, against the system's CAs
or the CA bundle file ``ca_file`` names.

Standard library only.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage

OUTCOMES = ("deployed", "rolled-back", "switched-back", "failed", "lock-refused")


def _figures_text(figures, baseline=None):
    if not figures:
        return ""
    text = f"{figures.get('requests', 0)} requests, {figures.get('errors_5xx', 0)} 5xx"
    if figures.get("p95_ms") is not None:
        text += f", p95 {figures['p95_ms']} ms"
    if baseline and baseline.get("p95_ms") is not None:
        text += f" (previous release: p95 {baseline['p95_ms']} ms)"
    return text


def compose(event):
    """(subject, text) for EVENT (app, host, outcome, version, ...)."""
    app = event.get("app", "?")
    host = event.get("host", "?")
    version = event.get("version") or "?"
    outcome = event.get("outcome", "failed")
    previous = event.get("previous_version") or ""
    reason = (event.get("reason") or "").strip()
    verification = event.get("verification") or {}
    if outcome == "deployed":
        head = f"{app} {version} is live on {host}" + (f" (was {previous})" if previous else "")
    elif outcome == "rolled-back":
        head = f"{app} rolled back to {version} on {host}" + (f" (from {previous})" if previous else "")
    elif outcome == "switched-back":
        head = f"{app} {version} was switched back on {host}: traffic is on {previous or 'the previous release'} again"
    elif outcome == "lock-refused":
        head = f"{app} {event.get('action', 'deploy')} of {version} on {host} was refused: another run holds the lock"
    else:
        head = f"{app} {event.get('action', 'deploy')} of {version} FAILED on {host}"
    lines = [head + "."]
    if reason:
        lines.append(f"Why: {reason}")
    figures = _figures_text(verification.get("figures"), verification.get("baseline"))
    if figures:
        lines.append(f"Verification window: {figures}.")
    for step in verification.get("steps") or []:
        lines.append(f"Canary {step.get('percent')} %: {_figures_text(step)}.")
    if event.get("warning"):
        lines.append(f"Warning: {event['warning']}")
    subject = f"[onebox] {head}"
    return subject, "\n".join(lines)


def post_webhook(url, payload, timeout=5.0):
    """POST PAYLOAD as JSON; None when accepted, else why not (no URL in it)."""
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        # The standard library opener, as module_utils/health does (no Ansible needed on the server).
        with urllib.request.build_opener().open(req, timeout=timeout) as resp:
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        # The reason is the socket's error (refused, unknown name), never the URL.
        return f"cannot connect ({exc.reason})"
    except (socket.timeout, TimeoutError):
        return f"no answer within {timeout:g} s"
    except (OSError, ValueError) as exc:
        return f"{exc.__class__.__name__}"


def tls_context(ca_file=None):
    """A client context that verifies the certificate and the host name:
    against the system's CAs, or only those of CA_FILE (PEM) when given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def send_mail(settings, subject, text, timeout=10.0):
    """Send one e-mail; None when accepted, else why not (no password in it).
    SETTINGS: host, port, tls (starttls, ssl or none), ca_file, username,
    password, from_addr, to."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = settings["from_addr"]
    msg["To"] = ", ".join(settings["to"])
    msg.set_content(text)
    tls = settings.get("tls") or "starttls"
    port = int(settings.get("port") or (465 if tls == "ssl" else 25))
    where = f"{settings['host']}:{port}"
    context = None
    if tls != "none":
        try:
            context = tls_context(settings.get("ca_file"))
        except (OSError, ssl.SSLError) as exc:
            return (
                f"cannot read the CA bundle {settings.get('ca_file')} ({getattr(exc, 'strerror', None) or exc}): "
                "ca_file must be a PEM file of CA certificates on this host"
            )
    try:
        if tls == "ssl":
            smtp = smtplib.SMTP_SSL(settings["host"], port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(settings["host"], port, timeout=timeout)
        with smtp:
            if tls == "starttls":
                smtp.starttls(context=context)
            if settings.get("username"):
                smtp.login(settings["username"], settings.get("password") or "")
            smtp.send_message(msg)
        return None
    except ssl.SSLCertVerificationError as exc:
        trusted = f"the CAs of {settings['ca_file']}" if settings.get("ca_file") else "the system's CAs"
        return (
            f"the TLS certificate of {where} did not verify against {trusted} "
            f"({exc.verify_message or exc.reason}): nothing was sent. Give the server a certificate for "
            f"{settings['host']}, or set ca_file to the CA that signed it."
        )
    except smtplib.SMTPAuthenticationError as exc:
        return f"the SMTP server refused the login ({exc.smtp_code})"
    except smtplib.SMTPNotSupportedError:
        return f"{where} does not offer STARTTLS: use tls: ssl (usually port 465), or none only for a local relay"
    except smtplib.SMTPException as exc:
        return f"SMTP error: {exc.__class__.__name__}"
    except ssl.SSLError as exc:
        return f"TLS with {where} failed ({exc.reason or exc.__class__.__name__}): nothing was sent"
    except OSError as exc:
        return f"cannot reach {where} ({exc.__class__.__name__})"


def notify(event, webhooks=(), email=None, timeout=5.0):
    """Send EVENT everywhere; returns {subject, text, sent, failed}."""
    subject, text = compose(event)
    payload = {"text": text, "onebox": event}
    sent, failed = [], []
    for i, url in enumerate(webhooks or [], start=1):
        why = post_webhook(url, payload, timeout)
        (failed if why else sent).append(f"webhook {i}" + (f": {why}" if why else ""))
    if email and email.get("host") and email.get("to"):
        why = send_mail(email, subject, text, timeout * 2)
        (failed if why else sent).append("e-mail" + (f": {why}" if why else ""))
    return {"subject": subject, "text": text, "sent": sent, "failed": failed}
