"""A local stand-in for Slack, a webhook and an SMTP server: every POST body
and every e-mail Alertmanager delivers is written to /var/tmp/receiver.

Runs inside the test server (python3 alert_receiver.py), listening on
127.0.0.1:9099 (HTTP) and 127.0.0.1:2525 (SMTP) only.
"""

import asyncore
import http.server
import itertools
import os
import smtpd
import threading

OUT = "/var/tmp/receiver"
COUNT = itertools.count()


def save(kind, data):
    n = next(COUNT)
    path = os.path.join(OUT, f"{n:04d}-{kind}")
    with open(path + ".tmp", "wb") as fh:
        fh.write(data)
    os.rename(path + ".tmp", path)


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        save(self.path.strip("/").replace("/", "_") or "root", body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Mail(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        save("mail", data if isinstance(data, bytes) else data.encode())


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    Mail(("127.0.0.1", 2525), None, decode_data=False)
    threading.Thread(target=asyncore.loop, daemon=True).start()
    http.server.ThreadingHTTPServer(("127.0.0.1", 9099), Hook).serve_forever()
