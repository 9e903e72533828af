"""The "internet" of the e2e recipe test, run as ONE process inside the internet namespace:

    ip netns exec NS python -m tests.e2e.internet SPEC.json

SPEC is {"dns": {"listen": "IP" or ["IP", ...], "records": {"name": ["IP", ...]}},
         "origins": [{"name": "allowed", "listen": "IP:PORT", "cert": PEM, "key": PEM}, ...],
         "udp": ["IP:PORT", ...]}
(`cert`/`key` make an origin speak TLS; an IPv6 origin listens on "[IP]:PORT"). The DNS server
answers A queries with the IPv4 records and AAAA queries with the IPv6 ones (authoritative, UDP
and TCP on port 53, on every listen address), NXDOMAIN for names it does not know and
NOERROR/no data for other types. Origins answer any GET with 200 "hello from NAME" and
`X-Origin: NAME`. Each "udp" socket answers every datagram with a short one (a stand-in for a
QUIC server's Version Negotiation) and reports {"event": "udp", "listen", "peer", "bytes"}.

stdout is JSON lines, for the test to read: {"event": "ready"} once every socket is bound, then
{"event": "request", "origin", "peer", "method", "target"} per request and {"event": "dns",
"name", "qtype", "peer"} per query. The process runs until it is killed.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


# -- DNS ----------------------------------------------------------------------------------------


def answer(records: dict[str, list[str]], data: bytes, peer: str) -> bytes | None:
    try:
        request = DNSRecord.parse(data)
    except Exception:
        return None
    reply = request.reply()
    name = str(request.q.qname).rstrip(".").lower()
    qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
    emit("dns", name=name, qtype=qtype, peer=peer)
    if name not in records:
        reply.header.rcode = RCODE.NXDOMAIN
    elif request.q.qtype == QTYPE.A:
        for address in records[name]:
            if ":" not in address:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=5))
    elif request.q.qtype == QTYPE.AAAA:
        for address in records[name]:
            if ":" in address:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=5))
    return bytes(reply.pack())


class _Udp(socketserver.BaseRequestHandler):
    server: _DnsUdp

    def handle(self) -> None:
        data, sock = self.request
        reply = answer(self.server.records, data, self.client_address[0])
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    server: _DnsTcp

    def handle(self) -> None:
        stream = self.request.makefile("rb")
        while True:
            head = stream.read(2)
            if len(head) < 2:
                return
            (length,) = struct.unpack("!H", head)
            reply = answer(self.server.records, stream.read(length), self.client_address[0])
            if reply is None:
                return
            self.request.sendall(struct.pack("!H", len(reply)) + reply)


class _DnsUdp(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True
    records: dict[str, list[str]]


class _DnsTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    records: dict[str, list[str]]


# -- origins ------------------------------------------------------------------------------------


class _Origin(BaseHTTPRequestHandler):
    server: _OriginServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK wait between

    def do_GET(self) -> None:
        name = self.server.origin_name
        emit("request", origin=name, peer=self.client_address[0], method="GET", target=self.path)
        body = f"hello from {name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin", name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are reported as JSON events instead


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin_name: str


class _OriginServer6(_OriginServer):
    address_family = socket.AF_INET6


def _origin(spec: dict[str, Any]) -> _OriginServer:
    host, _, port = spec["listen"].rpartition(":")
    if host.startswith("["):
        server: _OriginServer = _OriginServer6((host.strip("[]"), int(port)), _Origin)
    else:
        server = _OriginServer((host, int(port)), _Origin)
    server.origin_name = spec["name"]
    if spec.get("cert"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(spec["cert"], spec["key"])
        # The handshake happens in the request thread (on first read), not in the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server


# -- UDP (QUIC stand-in) ----------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        listen = "{}:{}".format(*sock.getsockname()[:2])
        emit("udp", listen=listen, peer=self.client_address[0], bytes=len(data))
        sock.sendto(b"\x80\x00\x00\x00\x00" + bytes(16), self.client_address)


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    servers: list[socketserver.BaseServer] = []
    dns = spec["dns"]
    records = {k.lower(): v for k, v in dns["records"].items()}
    listens = dns["listen"] if isinstance(dns["listen"], list) else [dns["listen"]]
    for listen in listens:
        for cls in (_DnsUdp, _DnsTcp):
            server = cls((listen, 53), _Udp if cls is _DnsUdp else _Tcp)
            server.records = records
            servers.append(server)
    servers += [_origin(o) for o in spec["origins"]]
    for udp in spec.get("udp", []):
        host, _, port = udp.rpartition(":")
        servers.append(_UdpServer((host, int(port)), _Echo))
    for running in servers:
        threading.Thread(target=running.serve_forever, daemon=True).start()
    emit("ready", pid=os.getpid())
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
