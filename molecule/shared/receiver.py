"""Stand-ins for Slack, a webhook and a mail server, run inside a test
server: every POST body and every e-mail delivered is written to
/var/tmp/receiver (one file each, NNNN-KIND).

  python3 receiver.py [--http 9099] [--smtp 2525] [--smtp-tls 587 --cert C --key K]

--smtp is plain SMTP; --smtp-tls offers STARTTLS (RFC 3207) with the
certificate given, as a real submission port does, and takes any AUTH.
Loopback only. Standard library only (no smtpd: gone in Python 3.12)."""

from __future__ import annotations

import argparse
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
    """Enough SMTP for smtplib and Alertmanager: EHLO/HELO, STARTTLS when the
    server has a TLS context, AUTH (PLAIN or LOGIN, any password), MAIL,
    RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self):
        tls, secure, lines, in_data = self.server.tls, False, [], False
        self.reply("220 receiver ESMTP")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if in_data:
                if line == ".":
                    kind = "mail-tls" if secure else "mail"
                    save(kind, "\n".join(lines).encode())
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
                self.connection = tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                self.wfile = self.connection.makefile("wb")
                secure = True
            elif verb == "AUTH":
                parts = line.split()
                if len(parts) == 2 and parts[1].upper() == "LOGIN":
                    self.reply("334 VXNlcm5hbWU6")
                    self.rfile.readline()
                    self.reply("334 UGFzc3dvcmQ6")
                    self.rfile.readline()
                self.reply("235 ok")
            elif verb == "DATA":
                in_data = True
                self.reply("354 go on")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, tls=None):
        self.tls = tls
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
