"""Issue 19, plain-HTTP data path: framing, response-head bounds, clients and origins that leave
mid-body, and the header timer on kept-alive connections. Real proxy, real origins, raw sockets.

- Request smuggling via `Connection: Content-Length` (and the pool poisoning it allowed): the
  proxy writes the framing of what it forwards; Connection can never remove it.
- The same on the response side, on a kept-alive client connection.
- Request trailers never reach the forwarded head.
- A response head is bounded in bytes and header fields: 502 upstream-bad-response.
- A client that leaves mid-body: both sides aborted, record 499, no descriptor kept.
- An upstream reset mid-body is logged with reason upstream-reset.
- Once a kept-alive connection's next head starts, it must finish within header_timeout_s.

"allowed.test" maps to 127.0.0.1 (the origins); nothing else is reachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.helpers_core import ports_of, read_until_close, start_proxy, wait_record
from tests.support.clients import ParsedResponse, parse_responses
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, pattern_bytes
from tests.support.proxy import ProxyFactory, ProxyProcess

HOST = "allowed.test"


# ---------------------------------------------------------------------------------------------
# A scripted origin: each connection runs a test-given function over the raw socket
# ---------------------------------------------------------------------------------------------


@dataclass
class ScriptedConnection:
    sock: socket.socket
    heads: list[bytes] = field(default_factory=list)
    sent: int = 0
    cut: bool = False  # a send failed: the proxy closed or reset the connection
    closed_at: float | None = None

    def read_head(self, timeout: float = 10.0) -> bytes | None:
        """The next request head (up to the empty line), or None at EOF / timeout."""
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and len(data) < 65536:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1)  # byte by byte: never read into the next request
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            data += chunk
        self.heads.append(data)
        return data

    def send(self, data: bytes) -> bool:
        try:
            self.sock.settimeout(10.0)
            self.sock.sendall(data)
        except OSError:
            self.cut = True
            self.closed_at = time.monotonic()
            return False
        self.sent += len(data)
        return True

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class ScriptedOrigin:
    """A loopback server; every accepted connection runs `script(conn)` in its own thread."""

    def __init__(self, script: Callable[[ScriptedConnection], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.connections: list[ScriptedConnection] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = ScriptedConnection(sock)
            self.connections.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: ScriptedConnection) -> None:
        try:
            self.script(conn)
        except OSError:
            conn.cut = True
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._acceptor.join(5)
        for conn in self.connections:
            with contextlib.suppress(OSError):
                # shutdown() wakes a script thread blocked in recv() (close() alone does not:
                # with the proxy still holding the pooled connection, join() waited its 5 s).
                conn.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[ScriptedConnection], None]], ScriptedOrigin]]:
    started: list[ScriptedOrigin] = []

    def make(script: Callable[[ScriptedConnection], None]) -> ScriptedOrigin:
        origin = ScriptedOrigin(script)
        started.append(origin)
        return origin

    try:
        yield make
    finally:
        for origin in started:
            origin.close()


def proxy_for(
    proxy_factory: ProxyFactory, dns_server: DnsServer, *ports: int, **keys: object
) -> ProxyProcess:
    dns_server.records[HOST] = ["127.0.0.1"]
    return start_proxy(proxy_factory, allow=[HOST], ports=ports_of(*ports), **keys)


def recv_response(sock: socket.socket, timeout: float = 3.0) -> tuple[ParsedResponse, bytes]:
    """One response from `sock`: read until its body is complete by its own framing (a response
    without framing is read until `timeout` or the close). Returns it and the bytes after it."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            responses, rest = parse_responses(data)
            head = data[:end].lower()
            framed = b"\r\ncontent-length:" in head or b"\r\ntransfer-encoding:" in head
            if framed and responses:
                return responses[0], rest
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    responses, rest = parse_responses(data)
    assert responses, f"no response within {timeout}s: {data[:500]!r}"
    return responses[0], rest


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_fds_at_most(pid: int, limit: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    count = open_fds(pid)
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.05)
        count = open_fds(pid)
    return count


# ---------------------------------------------------------------------------------------------
# High 1: Connection cannot remove framing; the proxy writes its own framing
# ---------------------------------------------------------------------------------------------

# The body (it says 52 bytes; it is 54: the lengths below are computed).
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: internal-admin.vhost\r\n\r\n"
SMUGGLED_LENGTH = len(SMUGGLED)


@pytest.mark.parametrize(
    "connection", ["Content-Length", "content-length, keep-alive", "Host, Content-Length"]
)
def test_connection_content_length_cannot_smuggle_a_second_request(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    connection: str,
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    authority = f"{HOST}:{origin.port}"
    attack = (
        f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n"
        f"Connection: {connection}\r\nContent-Length: {SMUGGLED_LENGTH}\r\n\r\n"
    ).encode() + SMUGGLED
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(attack)
        response, rest = recv_response(sock)
    assert response.status == 200
    assert json.loads(response.body)["length"] == SMUGGLED_LENGTH
    assert rest == b""
    time.sleep(0.3)  # a smuggled request would have been answered by now
    requests = origin.request_records()
    assert [(r.method, r.path) for r in requests] == [("POST", "/upload")], requests
    assert requests[0].header_values("Content-Length") == [str(SMUGGLED_LENGTH)]
    assert requests[0].body_length == SMUGGLED_LENGTH
    assert origin.request_records("/smuggled") == []


def test_connection_transfer_encoding_cannot_unframe_a_chunked_body(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    authority = f"{HOST}:{origin.port}"
    attack = (
        f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n"
        "Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%b\r\n0\r\n\r\n" % (SMUGGLED_LENGTH, SMUGGLED)
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(attack)
        response, _ = recv_response(sock)
    assert response.status == 200
    assert json.loads(response.body)["length"] == SMUGGLED_LENGTH
    time.sleep(0.3)
    assert [r.path for r in origin.request_records()] == ["/upload"]


def test_smuggled_response_cannot_poison_another_clients_pooled_connection(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    authority = f"{HOST}:{origin.port}"
    # The smuggled request is answered late: on the old code the upstream connection went back
    # to the shared pool meanwhile, and the next client's request got the smuggled answer.
    smuggled = b"GET /slow?delay=0.8 HTTP/1.1\r\nHost: internal-admin.vhost\r\n\r\n"
    attack = (
        f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n"
        f"Connection: Content-Length\r\nContent-Length: {len(smuggled)}\r\n\r\n"
    ).encode() + smuggled
    with socket.create_connection(proxy.proxy_address, timeout=5) as attacker:
        attacker.sendall(attack)
        first, _ = recv_response(attacker)
        assert first.status == 200
        with socket.create_connection(proxy.proxy_address, timeout=5) as victim:
            victim.sendall(
                f"GET http://{authority}/bytes/17 HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
            )
            answer, _ = recv_response(victim)
    assert answer.status == 200
    assert answer.body == pattern_bytes(17)
    assert origin.request_records("/slow") == []


def test_request_trailers_never_reach_the_forwarded_head(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    authority = f"{HOST}:{origin.port}"
    request = (
        f"POST http://{authority}/echo-headers HTTP/1.1\r\nHost: {authority}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\nX-Trailer-Evil: 1\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
    ).encode()
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(request)  # one write: head, body and trailers parsed in one read
        response, _ = recv_response(sock)
    assert response.status == 200
    names = [name.lower() for name, _ in json.loads(response.body)["headers"]]
    assert "x-trailer-evil" not in names
    assert "x-forwarded-for" not in names
    (record,) = origin.request_records("/echo-headers")
    assert record.trailers == []
    assert record.body_length == 5


def _content_length_named_in_connection(conn: ScriptedConnection) -> None:
    for _ in range(10):  # requests on this connection, bounded
        head = conn.read_head()
        if head is None:
            return
        if head.startswith(b"GET /first "):
            conn.send(
                b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
            )
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")


def test_response_with_connection_content_length_keeps_the_client_in_sync(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    scripted: Callable[[Callable[[ScriptedConnection], None]], ScriptedOrigin],
) -> None:
    origin = scripted(_content_length_named_in_connection)
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    authority = f"{HOST}:{origin.port}"
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{authority}/first HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first, rest = recv_response(sock, timeout=2.0)
        assert first.header("content-length") == "5", first.raw
        assert (first.body, rest) == (b"hello", b"")
        sock.sendall(f"GET http://{authority}/second HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        second, rest = recv_response(sock, timeout=2.0)
    assert (second.status, second.body, rest) == (200, b"second", b"")


# ---------------------------------------------------------------------------------------------
# High 2: the response head is bounded
# ---------------------------------------------------------------------------------------------

ENDLESS_LIMIT_BYTES = 4 * 1024 * 1024


def _endless_header_lines(conn: ScriptedConnection) -> None:
    if conn.read_head() is None:
        return
    conn.send(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"f" * 100 + b"\r\n"
    batch = line * 150  # ~16 KiB
    while conn.sent < ENDLESS_LIMIT_BYTES and conn.send(batch):
        pass


def _endless_header_value(conn: ScriptedConnection) -> None:
    if conn.read_head() is None:
        return
    conn.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    batch = b"v" * 16384
    while conn.sent < ENDLESS_LIMIT_BYTES and conn.send(batch):
        pass


def _many_headers(count: int) -> Callable[[ScriptedConnection], None]:
    def script(conn: ScriptedConnection) -> None:
        if conn.read_head() is None:
            return
        fields = b"".join(b"X-H%d: 1\r\n" % i for i in range(count))
        conn.send(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
        conn.read_head(2.0)  # keep the connection until the proxy is done with it

    return script


@pytest.mark.parametrize("script", [_endless_header_lines, _endless_header_value])
def test_endless_response_head_gets_502_quickly_and_memory_stays_bounded(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    scripted: Callable[[Callable[[ScriptedConnection], None]], ScriptedOrigin],
    script: Callable[[ScriptedConnection], None],
) -> None:
    origin = scripted(script)
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    rss_before = rss_kib(proxy.pid)
    authority = f"{HOST}:{origin.port}"
    started = time.monotonic()
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{authority}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, _ = recv_response(sock, timeout=10.0)
    elapsed = time.monotonic() - started
    assert response.status == 502
    assert response.header("X-Egressgate-Reason") == "upstream-bad-response"
    assert elapsed < 5.0, f"502 after {elapsed:.1f}s"
    record = wait_record(proxy, method="GET", host=HOST)
    assert (record["decision"], record["reason"], record["status"]) == (
        "error",
        "upstream-bad-response",
        502,
    )
    detail = record["detail"]
    assert "response head exceeds 65536 bytes" in detail or "more than 256 header" in detail
    # The proxy aborted the upstream connection: the origin's sends fail long before its cap.
    deadline = time.monotonic() + 5.0
    while not origin.connections[0].cut and time.monotonic() < deadline:
        time.sleep(0.05)
    assert origin.connections[0].cut, f"origin still sending after {origin.connections[0].sent}"
    assert origin.connections[0].sent < ENDLESS_LIMIT_BYTES
    growth_kib = rss_kib(proxy.pid) - rss_before
    assert growth_kib < 32 * 1024, f"proxy RSS grew by {growth_kib} KiB"


def test_response_with_too_many_header_fields_gets_502(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    scripted: Callable[[Callable[[ScriptedConnection], None]], ScriptedOrigin],
) -> None:
    too_many = scripted(_many_headers(300))
    fine = scripted(_many_headers(200))
    proxy = proxy_for(
        proxy_factory, dns_server, too_many.port, fine.port, limits={"max_response_headers": 250}
    )
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{HOST}:{too_many.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        refused, _ = recv_response(sock)
    assert refused.status == 502
    assert refused.header("X-Egressgate-Reason") == "upstream-bad-response"
    record = wait_record(proxy, port=too_many.port)
    assert "more than 250 header fields" in record["detail"]
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{HOST}:{fine.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answered, _ = recv_response(sock)
    assert (answered.status, answered.body) == (200, b"ok")
    assert answered.header("X-H199") == "1"


# ---------------------------------------------------------------------------------------------
# Medium 8: a client that leaves mid-body
# ---------------------------------------------------------------------------------------------


def _warm_up(proxy: ProxyProcess, origin: Origin) -> None:
    """One complete request first, so that lazily opened descriptors exist before counting."""
    authority = f"{HOST}:{origin.port}"
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{authority}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_response(sock)[0].status == 200


@pytest.mark.parametrize("case", ["chunked", "content-length"])
def test_client_leaving_mid_body_aborts_both_sides_and_is_logged_499(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    case: str,
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    _warm_up(proxy, origin)
    fds_before = open_fds(proxy.pid)
    authority = f"{HOST}:{origin.port}"
    head = f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n"
    if case == "chunked":
        data = (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhel").encode()
        relayed = 3
    else:
        data = (head + f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
        relayed = 10 * 1024 * 1024
    sock = socket.create_connection(proxy.proxy_address, timeout=10)
    try:
        sock.sendall(data)
        if case == "content-length":
            block = b"x" * (1024 * 1024)
            for _ in range(10):
                sock.sendall(block)
        time.sleep(0.3)  # let the proxy relay what it has
    finally:
        sock.close()  # FIN: the client is gone with its body unfinished
    left_at = time.monotonic()
    (request,) = origin.wait_for_requests(1, timeout=5.0, path="/upload")
    assert not request.body_complete, "the origin's connection was not closed"
    assert time.monotonic() - left_at < 3.0
    record = wait_record(proxy, method="POST", timeout=5.0)
    assert record["status"] == 499
    assert "mid-body" in record["detail"]
    assert record["bytes_up"] >= relayed if case == "chunked" else record["bytes_up"] > 0
    count = wait_fds_at_most(proxy.pid, fds_before)
    assert count <= fds_before, f"proxy holds {count} fds, {fds_before} before"


# ---------------------------------------------------------------------------------------------
# Low: upstream reset mid-body; the header timer on a kept-alive connection
# ---------------------------------------------------------------------------------------------


def _reset_mid_body(conn: ScriptedConnection) -> None:
    if conn.read_head() is None:
        return
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"b" * 100)
    time.sleep(0.3)
    conn.reset()


def test_upstream_reset_mid_body_is_logged_as_upstream_reset(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    scripted: Callable[[Callable[[ScriptedConnection], None]], ScriptedOrigin],
) -> None:
    origin = scripted(_reset_mid_body)
    proxy = proxy_for(proxy_factory, dns_server, origin.port)
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(f"GET http://{HOST}:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        result = read_until_close(sock, 5.0)
    assert result.closed or result.reset, "the client connection was not cut"
    assert result.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert result.data.endswith(b"b" * 100)
    record = wait_record(proxy, method="GET")
    assert (record["decision"], record["reason"], record["status"]) == (
        "allow",
        "upstream-reset",
        200,
    )
    assert record["bytes_down"] == 100
    assert "100 response body bytes relayed" in record["detail"]


def test_next_head_on_a_kept_alive_connection_must_finish_within_header_timeout(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin")
    proxy = proxy_for(
        proxy_factory,
        dns_server,
        origin.port,
        limits={"header_timeout_s": 0.6, "keepalive_timeout_s": 30},
    )
    request = f"GET http://{HOST}:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(request)
        assert recv_response(sock)[0].status == 200
        time.sleep(1.0)  # idle longer than header_timeout_s: still within keep-alive
        sock.sendall(request)
        assert recv_response(sock)[0].status == 200
        started = time.monotonic()
        received = b""
        closed = False
        for byte in request[:-4]:  # one byte every 100 ms: the head never completes
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            received += chunk
            if not chunk:
                closed = True
                break
            if time.monotonic() - started > 5.0:
                break
        if not closed:
            rest = read_until_close(sock, 3.0)
            received += rest.data
            closed = rest.closed or rest.reset
    elapsed = time.monotonic() - started
    assert closed, "the proxy kept a trickling head on a kept-alive connection"
    assert elapsed < 3.0, f"cut after {elapsed:.1f}s with header_timeout_s 0.6"
    if received:
        (response,), _ = parse_responses(received)
        assert response.status == 408
        assert response.header("X-Egressgate-Reason") == "header-timeout"
