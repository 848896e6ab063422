"""A storage host on loopback that enforces append-only copies, as the README
tells a user to set one up: a real sshd whose keys have forced commands
(the server's key: ``rrsync -no-del -no-overwrite``, the prune run's key:
``rrsync``), and ``rclone serve restic --append-only`` with TLS and basic
auth. Everything listens on 127.0.0.1 only; the processes end with the test."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import free_port, wait_for

RREST_USER = "box"
RREST_PASSWORD = "test-only-rest-password"


def _listens(pid, port):
    """Whether process PID itself listens on 127.0.0.1:PORT. A port that
    free_port() gave can be taken before the program binds it (Docker
    publishes containers' ports on random ones while the scenarios run
    beside pytest): then something else answers there, a registry's 401
    say, and the program has failed to bind."""
    inodes = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and local.upper() == f"0100007F:{port:04X}":
                inodes.add(f"socket:[{inode}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _key(path, comment):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class Storage:
    def __init__(self, top):
        for tool in ("/usr/sbin/sshd", "/usr/bin/rrsync", "/usr/bin/rclone"):
            if not os.path.exists(tool):
                pytest.skip(f"{tool} is missing (scripts/test.sh setup: openssh-server, rsync, rclone)")
        self.top = top
        self.wal = top / "wal"
        self.restic_root = top / "restic"
        self.wal.mkdir()
        self.restic_root.mkdir()
        self.procs = []
        self.server_key = top / "server_key"
        self.prune_key = top / "prune_key"
        server_pub = _key(self.server_key, "server")
        prune_pub = _key(self.prune_key, "prune")
        _key(top / "host_key", "host")
        (top / "authorized_keys").write_text(
            f'command="/usr/bin/rrsync -no-del -no-overwrite {self.wal}",restrict {server_pub}\n'
            f'command="/usr/bin/rrsync {self.wal}",restrict {prune_pub}\n'
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

        def sshd(port):
            (top / "sshd_config").write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {top}/host_key\nPidFile {top}/sshd.pid\n"
                f"AuthorizedKeysFile {top}/authorized_keys\nPermitRootLogin forced-commands-only\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
            )
            return ["/usr/sbin/sshd", "-D", "-e", "-f", str(top / "sshd_config")]

        self.ssh_port = self._start(sshd)
        host_pub = (top / "host_key.pub").read_text().split()
        self.known_hosts = top / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.ssh_port} {host_pub[0]} {host_pub[1]}\n")
        # The restic endpoint: TLS with a certificate of its own, basic auth.
        self.cert = top / "rest.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ed25519",
                "-nodes",
                "-keyout",
                str(top / "rest.key"),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        self.rest_port = self._start(
            lambda port: [
                "rclone",
                "serve",
                "restic",
                "--append-only",
                "--private-repos",
                "--addr",
                f"127.0.0.1:{port}",
                "--user",
                RREST_USER,
                "--pass",
                RREST_PASSWORD,
                "--cert",
                str(self.cert),
                "--key",
                str(top / "rest.key"),
                str(self.restic_root),
            ]
        )
        (top / "rest-password").write_text(RREST_PASSWORD)
        self.rest_repository = f"rest:https://127.0.0.1:{self.rest_port}/{RREST_USER}/"
        # The repository as the prune run on the storage host sees it.
        self.restic_dir = self.restic_root / RREST_USER

    def _start(self, argv_for, tries=5):
        """Start the program ARGV_FOR(port) returns on a free port; the port
        once the program itself listens there (another port when it was
        taken first, see _listens)."""
        for _try in range(tries):
            port = free_port()
            argv = argv_for(port)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append(proc)
            try:
                wait_for(
                    lambda proc=proc, port=port: _listens(proc.pid, port) or proc.poll() is not None,
                    timeout=30,
                    interval=0.1,
                )
            except AssertionError:
                pass
            if proc.poll() is None and _listens(proc.pid, port):
                return port
            proc.kill()
            proc.wait()
            error = proc.stderr.read().decode()[-500:]
        raise RuntimeError(f"{argv[0]} did not start on a port of its own in {tries} tries: {error}")

    def server_settings(self, wal=False):
        """What the offsite role writes for the server: the append-only
        credentials (WAL: with the mirror)."""
        out = {
            "repository": self.rest_repository,
            "rest_user": RREST_USER,
            "rest_password_file": str(self.top / "rest-password"),
            "cacert": str(self.cert),
            "ssh_key": str(self.server_key),
            "known_hosts": str(self.known_hosts),
            "ssh_port": self.ssh_port,
        }
        if wal:
            out["wal_target"] = "root@127.0.0.1:"
        return out

    def prune_settings(self, over_ssh=True):
        """The prune run's: other credentials (the prune key; the repository
        directory, as on the storage host itself)."""
        out = {"repository": str(self.restic_dir)}
        if over_ssh:
            out.update(
                ssh_key=str(self.prune_key),
                known_hosts=str(self.known_hosts),
                ssh_port=self.ssh_port,
                wal_target="root@127.0.0.1:",
            )
        else:
            out["wal_target"] = str(self.wal)
        return out

    def rest(self, method, path, data=None):
        """One request to the restic endpoint with the server's credentials
        (what restic sends to forget a snapshot or rewrite a file): the
        HTTP status."""
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.rest_port}/{RREST_USER}/{path}", data=data, method=method
        )
        token = base64.b64encode(f"{RREST_USER}:{RREST_PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=self.cert)):
                return 200
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.top, ignore_errors=True)


@contextlib.contextmanager
def running(tmp_path):
    """A Storage under TMP_PATH for the length of the block (a test's fixture)."""
    top = tmp_path / "storage"
    top.mkdir()
    box = Storage(top)
    try:
        yield box
    finally:
        box.stop()
