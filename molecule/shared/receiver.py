"""Stand-ins for Slack, a webhook and a mail server, run inside a test
server: every POST body and every e-mail delivered is written to
/var/tmp/receiver (one file each, NNNN-KIND).

  python3 receiver.py [--http 9099] [--smtp 2525] [--smtp-tls 587 --cert C --key K]

--smtp is plain SMTP; --smtp-tls offers STARTTLS (RFC 3207) with the
certificate given, as a real submission port does, and takes any AUTH.
Loopback only. Standard library only (no smtpd: gone in Python 3.12).
tests/integration/test_release_notify.py imports the SMTP server from here."""

from __future__ import annotations

import argparse
import base64
import http.server
import itertools
import os
import socketserver
import ssl
import threading

OUT = "/var/tmp/receiver"
COUNT = itertools.count()
LOCK = threading.Lock()


def save(kind, data):
    with LOCK:
        n = next(COUNT)
    path = os.path.join(OUT, f"{n:04d}-{kind}")
    with open(path + ".tmp", "wb") as fh:
        fh.write(data)
    os.rename(path + ".tmp", path)


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        save(self.path.strip("/").split("/")[0] or "root", body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Smtp(socketserver.StreamRequestHandler):
    """Enough SMTP (RFC 5321) for smtplib and Alertmanager: EHLO/HELO,
    STARTTLS (RFC 3207) when the server has a TLS context, AUTH PLAIN or
    LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT. The server decides the rest
    (SmtpServer): implicit TLS, who may log in, where each mail goes."""

    def setup(self):
        if self.server.implicit:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def readline(self):
        return self.rfile.readline().decode("utf-8", "replace").rstrip("\r\n")

    def login(self, line):
        """AUTH: [user, password] (bytes) when the server accepts them, else None."""
        parts = line.split()
        mechanism = parts[1].upper() if len(parts) > 1 else ""
        if mechanism == "PLAIN":
            if len(parts) > 2:
                blob = parts[2]
            else:
                self.reply("334 ")
                blob = self.readline()
            user, password = (base64.b64decode(blob).split(b"\0")[1:] + [b"", b""])[:2]
        elif mechanism == "LOGIN":
            self.reply("334 VXNlcm5hbWU6")
            user = base64.b64decode(self.readline())
            self.reply("334 UGFzc3dvcmQ6")
            password = base64.b64decode(self.readline())
        else:
            self.reply("504 unrecognised authentication type")
            return None
        if self.server.accept(user, password):
            self.reply("235 ok")
            return [user, password]
        self.reply("535 bad login")
        return None

    def handle(self):
        tls, secure, lines, in_data, auth = self.server.tls, self.server.implicit, [], False, None
        self.reply("220 receiver ESMTP")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if in_data:
                if line == ".":
                    self.server.deliver({"text": "\n".join(lines), "tls": secure, "auth": auth})
                    lines, in_data = [], False
                    self.reply("250 queued")
                else:
                    lines.append(line[1:] if line.startswith("..") else line)
                continue
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                caps = ["receiver", "AUTH PLAIN LOGIN"] + (["STARTTLS"] if tls and not secure else [])
                for i, cap in enumerate(caps):
                    self.reply(("250 " if i == len(caps) - 1 else "250-") + cap)
            elif verb == "STARTTLS" and tls and not secure:
                self.reply("220 go ahead")
                self.connection = self.request = tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                self.wfile = self.connection.makefile("wb")
                secure = True
            elif verb == "AUTH":
                auth = self.login(line)
            elif verb == "DATA":
                in_data = True
                self.reply("354 go on")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


def save_mail(mail):
    save("mail-tls" if mail["tls"] else "mail", mail["text"].encode())


class SmtpServer(socketserver.ThreadingTCPServer):
    """On 127.0.0.1:PORT (0: any free port). TLS: an SSLContext for STARTTLS,
    or for the whole session with IMPLICIT (port 465 style); DELIVER(mail)
    gets each mail ({text, tls, auth}); ACCEPT(user, password) says who may
    log in (anyone by default)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, tls=None, implicit=False, deliver=save_mail, accept=None):
        self.tls, self.implicit, self.deliver = tls, implicit, deliver
        self.accept = accept or (lambda user, password: True)
        super().__init__(("127.0.0.1", port), Smtp)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=9099)
    parser.add_argument("--smtp", type=int, default=2525)
    parser.add_argument("--smtp-tls", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    servers = [SmtpServer(args.smtp)]
    if args.smtp_tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        servers.append(SmtpServer(args.smtp_tls, context))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    http.server.ThreadingHTTPServer(("127.0.0.1", args.http), Hook).serve_forever()


if __name__ == "__main__":
    main()
