"""release_notify against a real HTTP receiver and a real (minimal) SMTP
server on loopback: one message per outcome with the figures, no secret in
what the module returns, and a notice that cannot go out never fails."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading

import pytest
from conftest import free_port, run_module


class Inbox:
    def __init__(self):
        self.posts = []
        self.mails = []


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

    class Smtp(socketserver.StreamRequestHandler):
        """Just enough SMTP (RFC 5321) for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

        def reply(self, line):
            self.wfile.write((line + "\r\n").encode())

        def handle(self):
            self.reply("220 sink ESMTP")
            data, in_data, auth = [], False, None
            for raw in self.rfile:
                line = raw.decode().rstrip("\r\n")
                if in_data:
                    if line == ".":
                        box.mails.append({"auth": auth, "text": "\n".join(data)})
                        in_data, data = False, []
                        self.reply("250 queued")
                    else:
                        data.append(line[1:] if line.startswith("..") else line)
                    continue
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    self.wfile.write(b"250-sink\r\n250 AUTH PLAIN\r\n")
                elif verb == "AUTH":
                    import base64

                    auth = base64.b64decode(line.split()[-1]).split(b"\0")[1:]
                    self.reply("535 bad login" if auth[1] == b"wrong" else "235 ok")
                elif verb == "DATA":
                    in_data = True
                    self.reply("354 go on")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("250 ok")

    http_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    smtp_srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
    for srv in (http_srv, smtp_srv):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    box.hook = f"http://127.0.0.1:{http_srv.server_address[1]}"
    box.smtp_port = smtp_srv.server_address[1]
    yield box
    for srv in (http_srv, smtp_srv):
        srv.shutdown()
        srv.server_close()


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
