"""release_notify against a real HTTP receiver and a real (minimal) SMTP
server on loopback: one message per outcome with the figures, no secret in
what the module returns, and a notice that cannot go out never fails."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import ssl
import sys
import threading

import pytest
from conftest import ROOT, free_port, run_module

sys.path.insert(0, os.path.join(ROOT, "molecule", "shared"))
import receiver


class Inbox:
    def __init__(self):
        self.posts = []
        self.mails = []
        self.errors = []


class SmtpSink(receiver.SmtpServer):
    """The test servers' SMTP stand-in (molecule/shared/receiver.py), on any
    free port: its mails in BOX, the password "wrong" refused."""

    def __init__(self, box, tls=None, implicit=False):
        self.box = box
        super().__init__(0, tls, implicit, deliver=box.mails.append, accept=lambda user, password: password != b"wrong")

    def handle_error(self, request, client_address):
        # A handshake the client refused: recorded, not printed.
        self.box.errors.append(sys.exc_info()[1])


def serve(*servers):
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()


def stop(*servers):
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def inbox():
    box = Inbox()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            box.posts.append((self.path, json.loads(body)))
            self.send_response(404 if "missing" in self.path else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    http_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    smtp_srv = SmtpSink(box)
    serve(http_srv, smtp_srv)
    box.hook = f"http://127.0.0.1:{http_srv.server_address[1]}"
    box.smtp_port = smtp_srv.server_address[1]
    yield box
    stop(http_srv, smtp_srv)


EVENT = {
    "app": "shop",
    "host": "web1",
    "action": "deploy",
    "outcome": "switched-back",
    "version": "v5",
    "previous_version": "v4",
    "reason": "12 of 131 requests answered 5xx (9.2 %, over the 1 % limit)",
    "verification": {
        "figures": {"requests": 131, "errors_5xx": 12, "p95_ms": 7},
        "baseline": {"requests": 1000, "errors_5xx": 0, "p95_ms": 4},
        "steps": [{"percent": 10, "requests": 131, "errors_5xx": 12, "p95_ms": 7}],
    },
}


def test_one_message_per_channel_with_the_figures(inbox):
    email = {
        "host": "127.0.0.1",
        "port": inbox.smtp_port,
        "tls": "none",
        "username": "deploy",
        "password": "smtp-secret-9a1",
        "from_addr": "onebox@shop.test",
        "to": ["ops@shop.test"],
    }
    secret_hook = inbox.hook + "/services/T000/B000/hook-secret-77"
    rc, res = run_module("release_notify", dict(event=EVENT, webhooks=[secret_hook], email=email))
    assert rc == 0, res
    assert res["changed"] is True and res["sent"] == ["webhook 1", "e-mail"] and res["failed"] == []
    ((path, body),) = inbox.posts
    assert path.endswith("hook-secret-77")
    assert "shop v5 was switched back on web1" in body["text"]
    assert "131 requests, 12 5xx, p95 7 ms (previous release: p95 4 ms)" in body["text"]
    assert "Canary 10 %" in body["text"]
    assert body["onebox"]["outcome"] == "switched-back"
    (mail,) = inbox.mails
    assert mail["auth"] == [b"deploy", b"smtp-secret-9a1"]
    assert "Subject: [onebox] shop v5 was switched back on web1" in mail["text"]
    assert "12 of 131 requests answered 5xx" in mail["text"]
    dump = json.dumps(res)
    assert "hook-secret-77" not in dump and "smtp-secret-9a1" not in dump


@pytest.mark.parametrize(
    "outcome, words",
    [
        ("deployed", "shop v5 is live on web1 (was v4)"),
        ("rolled-back", "shop rolled back to v5 on web1 (from v4)"),
        ("failed", "shop deploy of v5 FAILED on web1"),
        ("lock-refused", "was refused: another run holds the lock"),
    ],
)
def test_every_outcome_has_its_words(inbox, outcome, words):
    rc, res = run_module("release_notify", dict(event=dict(EVENT, outcome=outcome), webhooks=[inbox.hook + "/x"]))
    assert rc == 0 and words in inbox.posts[0][1]["text"], res


def test_a_notice_that_cannot_go_out_is_a_warning_not_a_failure(inbox):
    dead = f"http://127.0.0.1:{free_port()}/hook-secret-1"
    email = {
        "host": "127.0.0.1",
        "port": inbox.smtp_port,
        "tls": "none",
        "username": "u",
        "password": "wrong",
        "to": ["ops@shop.test"],
    }
    rc, res = run_module(
        "release_notify", dict(event=EVENT, webhooks=[dead, inbox.hook + "/missing", inbox.hook + "/ok"], email=email)
    )
    assert rc == 0, res
    assert res["sent"] == ["webhook 3"]
    assert res["failed"][0].startswith("webhook 1: cannot connect")
    assert res["failed"][1] == "webhook 2: HTTP 404"
    assert res["failed"][2] == "e-mail: the SMTP server refused the login (535)"
    assert "hook-secret-1" not in json.dumps(res)


def test_an_unknown_outcome_is_refused(inbox):
    rc, res = run_module("release_notify", dict(event=dict(EVENT, outcome="great"), webhooks=[inbox.hook]))
    assert rc != 0 and "event.outcome must be one of" in res["msg"]
    assert inbox.posts == []


# --- SMTP over TLS: a mail sink whose certificate only the test's own CA signed ----------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA made here (trusted by nothing on this machine) and a certificate it
    signed for 127.0.0.1 (and no host name)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, key, issuer, issuer_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    usage = dict(content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False)
    ca = cert(
        "onebox test CA",
        ca_key,
        "onebox test CA",
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=False,
                    key_encipherment=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    decipher_only=False,
                    **usage,
                ),
                True,
            ),
        ],
    )
    leaf = cert(
        "mail sink",
        key,
        "onebox test CA",
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    decipher_only=False,
                    **usage,
                ),
                True,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        ],
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "sink.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "sink.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "sink.pem", d / "sink.key")
    return {"ca": str(d / "ca.pem"), "server": server}


@pytest.fixture(params=["ssl", "starttls"])
def tls_sink(request, pki):
    box = Inbox()
    srv = SmtpSink(box, tls=pki["server"], implicit=request.param == "ssl")
    serve(srv)
    box.tls, box.port, box.ca = request.param, srv.server_address[1], pki["ca"]
    yield box
    stop(srv)


def mail_to(sink, **extra):
    email = dict(
        host="127.0.0.1",
        port=sink.port,
        tls=sink.tls,
        username="deploy",
        password="smtp-secret-tls-5",
        from_addr="onebox@shop.test",
        to=["ops@shop.test"],
    )
    rc, res = run_module("release_notify", dict(event=EVENT, email=dict(email, **extra)))
    assert rc == 0, res
    assert "smtp-secret-tls-5" not in json.dumps(res)
    return res


def test_mail_over_tls_is_refused_when_the_certificate_is_not_from_a_trusted_ca(tls_sink):
    res = mail_to(tls_sink)
    (failure,) = res["failed"]
    assert failure.startswith(f"e-mail: the TLS certificate of 127.0.0.1:{tls_sink.port} did not verify against ")
    assert "the system's CAs (unable to get local issuer certificate)" in failure, failure
    assert "set ca_file to the CA that signed it" in failure
    assert res["sent"] == [] and tls_sink.mails == []


def test_mail_over_tls_is_accepted_with_the_ca_that_signed_the_certificate(tls_sink):
    res = mail_to(tls_sink, ca_file=tls_sink.ca)
    assert res["sent"] == ["e-mail"] and res["failed"] == [], res
    (mail,) = tls_sink.mails
    assert mail["tls"] is True and mail["auth"] == [b"deploy", b"smtp-secret-tls-5"]
    assert "Subject: [onebox] shop v5 was switched back on web1" in mail["text"]


def test_mail_over_tls_is_refused_for_a_host_name_the_certificate_does_not_name(tls_sink):
    # localhost is this same loopback sink, but the certificate names 127.0.0.1 only.
    res = mail_to(tls_sink, ca_file=tls_sink.ca, host="localhost")
    (failure,) = res["failed"]
    assert (
        f"the TLS certificate of localhost:{tls_sink.port} did not verify against the CAs of {tls_sink.ca}" in failure
    )
    assert "(Hostname mismatch, certificate is not valid for 'localhost'.)" in failure, failure
    assert "Give the server a certificate for localhost" in failure
    assert tls_sink.mails == []


def test_an_unreadable_ca_file_is_a_clear_warning(tls_sink, tmp_path):
    res = mail_to(tls_sink, ca_file=str(tmp_path / "missing.pem"))
    (failure,) = res["failed"]
    assert failure.startswith(f"e-mail: cannot read the CA bundle {tmp_path / 'missing.pem'}")
    assert tls_sink.mails == []
