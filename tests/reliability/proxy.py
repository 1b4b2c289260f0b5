"""The shipped nginx in front of replicas, on loopback: the real `nginx` binary (Debian package `nginx-light`,
installed by `make test`) with deploy/nginx/nginx.conf changed only in its addresses, and a tiny DNS server.

The shipped file resolves the compose service name `api` through Docker's DNS (127.0.0.11) at request time, so that
`--scale api=N` is followed. Here `api` resolves, through `DnsServer` on 127.0.0.1, to two loopback addresses
(127.0.0.2 and 127.0.0.3, where the two replicas listen on the same port, as compose replicas do on theirs); the
resolver, listen and upstream addresses are substituted, and the pid file goes into the test's folder. Every
substitution must match exactly once, so a changed shipped file fails here instead of being tested half.
nginx runs as a normal foreground process (`daemon off`), stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import REPO_ROOT
from tests.processes import free_port, stop

SHIPPED = REPO_ROOT / "deploy" / "nginx" / "nginx.conf"
SERVICE_NAME = "api"
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3")
TTL = 10


class DnsServer:
    """Answers A queries for one name with fixed addresses (UDP, 127.0.0.1), and NXDOMAIN for other names."""

    def __init__(self, name: str, addresses: tuple[str, ...]) -> None:
        self.name, self.addresses = name, addresses
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, client = self.socket.recvfrom(512)
            except TimeoutError:
                continue
            self.queries += 1
            self.socket.sendto(self.answer(query), client)

    def answer(self, query: bytes) -> bytes:
        ident, flags = struct.unpack("!HH", query[:4])
        labels, pos = [], 12
        while query[pos]:
            labels.append(query[pos + 1 : pos + 1 + query[pos]].decode().lower())
            pos += 1 + query[pos]
        question = query[12 : pos + 5]  # name, its terminating zero, type, class
        qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
        known = ".".join(labels) == self.name
        records = self.addresses if known and qtype == 1 else ()
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton(a) for a in records)
        header_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if known else 3)  # QR AA RD RA, NXDOMAIN
        return struct.pack("!HHHHHH", ident, header_flags, 1, len(records), 0, 0) + question + answers


def adapted_config(dns_port: int, listen_port: int, upstream_port: int, folder: Path) -> str:
    text = SHIPPED.read_text()
    for old, new in (
        ("pid /tmp/nginx.pid;", f"pid {folder / 'nginx.pid'};"),
        ("resolver 127.0.0.11 ", f"resolver 127.0.0.1:{dns_port} "),
        ("listen 8080;", f"listen 127.0.0.1:{listen_port};"),
        (f"http://{SERVICE_NAME}:8000;", f"http://{SERVICE_NAME}:{upstream_port};"),
    ):
        if text.count(old) != 1:
            raise AssertionError(f"{SHIPPED}: expected {old!r} once, found it {text.count(old)} times")
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]
    folder: Path

    def logs(self) -> str:
        return (self.folder / "nginx.out").read_text(errors="replace")

    def stop(self) -> int:
        return stop(self.process, timeout=10)


def start_nginx(folder: Path, dns_port: int, upstream_port: int) -> Nginx:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        raise RuntimeError("nginx is not installed: run `make test`, or `apt-get install -y nginx-light`")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    config = folder / "nginx.conf"
    config.write_text(adapted_config(dns_port, port, upstream_port, folder))
    args = [binary, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log"), "-g", "daemon off;"]
    with (folder / "nginx.out").open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = Nginx(f"http://127.0.0.1:{port}", process, folder)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{proxy.url}/nginx-health", timeout=2).status_code == 200:
                return proxy
        except requests.ConnectionError:
            time.sleep(0.05)
    proxy.stop()
    raise RuntimeError(f"nginx did not answer on {proxy.url}:\n{proxy.logs()}")
