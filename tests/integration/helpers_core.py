"""Shared helpers for the core-proxy integration tests (issue 2: "done means").

Everything here drives REAL components: the proxy subprocess, real sockets, real clients. The
helpers only build request bytes, check refusal responses, find access-log records, and (for the
few tests that must name a non-loopback address) run the proxy inside a throw-away network
namespace in which such an address is unreachable, so that nothing can leave the machine even if
the proxy is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from tests.support.clients import (
    ConnectTunnel,
    ParsedResponse,
    RawResult,
    open_connect_tunnel,
    parse_responses,
    read_to_end,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin, RawOrigin
from tests.support.proxy import ProxyFactory, ProxyProcess

T = TypeVar("T")
Address = tuple[str, int]

LOOPBACK_NET = "127.0.0.0/8"
REASON_HEADER = "X-Egressgate-Reason"
POLICY_HEADER = "X-Egressgate-Policy"
ACCESS_LOG_FIELDS = (
    "ts",
    "client",
    "user",
    "policy",
    "method",
    "host",
    "port",
    "address",
    "decision",
    "reason",
    "rule",
    "status",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "kind",
    "sni",
    "detail",
    "original_dst",
    "path",
)


# ---------------------------------------------------------------------------------------------
# Starting the proxy
# ---------------------------------------------------------------------------------------------


def ports_of(*servers: Origin | RawOrigin | int) -> list[int]:
    """The ports of `servers` (origins or plain port numbers), deduplicated, in order."""
    ports = [s if isinstance(s, int) else s.port for s in servers]
    return list(dict.fromkeys(ports))


def start_proxy(
    proxy_factory: ProxyFactory,
    *,
    allow: Sequence[str],
    ports: Sequence[int],
    allow_private: Sequence[str] = (LOOPBACK_NET,),
    http_ports: Sequence[int] | None = None,
    connect_ports: Sequence[int] | None = None,
    **keys: Any,
) -> ProxyProcess:
    """A real proxy allowing `allow` on `ports` (both http_ports and connect_ports unless given
    separately), with loopback destinations permitted by `allow_private` (default 127.0.0.0/8:
    every test origin is on loopback)."""
    return proxy_factory(
        allow=list(allow),
        allow_private=list(allow_private),
        http_ports=list(http_ports if http_ports is not None else ports),
        connect_ports=list(connect_ports if connect_ports is not None else ports),
        **keys,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` with nothing listening: bind it, read it, close it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def ipv6_loopback_available() -> bool:
    """True if this machine can bind ::1."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")


# ---------------------------------------------------------------------------------------------
# Raw requests
# ---------------------------------------------------------------------------------------------


def authority_of(url: str) -> str:
    """The authority ("host:port") of an absolute URL."""
    rest = url.split("://", 1)[1]
    for delimiter in "/?#":
        rest = rest.split(delimiter, 1)[0]
    return rest


def http_request(
    target: str,
    *,
    method: str = "GET",
    host: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    close: bool = False,
) -> bytes:
    """Request bytes for `METHOD target VERSION` with a Host header (default: the target's
    authority; "" leaves it out), `headers`, Content-Length for a non-empty `body`, and
    `Connection: close` if `close`."""
    if host is None:
        host = authority_of(target) if "://" in target else target
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def single_response(result: RawResult, bodyless: Sequence[int] = ()) -> ParsedResponse:
    """The one complete response in `result` (fails if there are more, none, or leftovers)."""
    responses, rest = parse_responses(result.data, set(bodyless))
    assert len(responses) == 1, f"expected one response, got {len(responses)}: {result!r}"
    assert rest == b"", f"bytes after the response: {rest[:300]!r}"
    return responses[0]


def send_raw(
    proxy: ProxyProcess,
    data: bytes | Sequence[bytes],
    *,
    read_timeout: float = 5.0,
    total_timeout: float = 30.0,
) -> RawResult:
    """Like `raw_request` to the proxy's listener (send every piece, then read until close or
    `read_timeout` of silence), except that a failed send does not stop the reading: a proxy
    that refuses a request while the client is still sending it closes with unread data, the
    client's next send fails, yet the refusal is there to be read."""
    pieces = [data] if isinstance(data, bytes | bytearray) else list(data)
    with socket.create_connection(proxy.proxy_address, timeout=read_timeout) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        deadline = time.monotonic() + total_timeout
        return read_to_end(sock, read_timeout=read_timeout, deadline=deadline)


class _HasResponse(Protocol):
    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str | None: ...


def assert_refusal(
    response: _HasResponse,
    status: int,
    reason: str,
    *,
    body: bytes | None = None,
    host: str | None = None,
    policy: str | None = "default",
) -> None:
    """`response` is egressgate's refusal: `status`, `X-Egressgate-Reason: reason`,
    `Connection: close`, the deciding policy (if `policy`), and a text body naming the reason
    (and `host`, if given)."""
    assert response.status == status, f"status {response.status}, wanted {status}"
    assert response.header(REASON_HEADER) == reason, (
        f"{REASON_HEADER}: {response.header(REASON_HEADER)!r}, wanted {reason!r}"
    )
    assert (response.header("connection") or "").lower() == "close"
    if policy is not None:
        assert response.header(POLICY_HEADER) == policy
    if body is not None:
        text = body.decode("utf-8", "replace")
        assert f"{status} {reason}" in text, text
        if host is not None:
            assert f"host: {host}" in text, text


def assert_raw_refusal(
    result: RawResult,
    status: int,
    reason: str,
    *,
    host: str | None = None,
    policy: str | None = "default",
) -> ParsedResponse:
    """The proxy answered exactly one refusal and closed the connection."""
    response = single_response(result)
    assert_refusal(response, status, reason, body=response.body, host=host, policy=policy)
    assert result.closed or result.reset, f"connection left open after a refusal: {result!r}"
    return response


def tunnel_request(
    proxy: ProxyProcess,
    authority: str,
    request: bytes,
    *,
    timeout: float = 10.0,
) -> tuple[ConnectTunnel, RawResult]:
    """CONNECT `authority`; if answered 2xx, send `request` through the tunnel and read until
    the far end closes. Returns the CONNECT answer and what came back through the tunnel."""
    tunnel = open_connect_tunnel(proxy.proxy_address, authority, timeout=timeout)
    with tunnel:
        if not 200 <= tunnel.status < 300:
            rest = read_until_close(tunnel.sock, timeout)
            return tunnel, RawResult(tunnel.leftover + rest.data, rest.closed, rest.reset, False)
        tunnel.sock.sendall(request)
        result = read_until_close(tunnel.sock, timeout)
        return tunnel, RawResult(
            tunnel.leftover + result.data, result.closed, result.reset, result.timed_out
        )


def read_until_close(sock: socket.socket, timeout: float = 10.0) -> RawResult:
    """Read from `sock` until EOF/reset or `timeout` seconds in total."""
    return read_to_end(sock, read_timeout=timeout, deadline=time.monotonic() + timeout)


def connect_refusal(proxy: ProxyProcess, authority: str) -> ParsedResponse:
    """CONNECT `authority`, which must be refused: the refusal response, connection closed."""
    with open_connect_tunnel(proxy.proxy_address, authority) as tunnel:
        rest = read_until_close(tunnel.sock, 5.0)
        data = tunnel.raw_head + tunnel.leftover + rest.data
    assert rest.closed or rest.reset, "the proxy kept a refused CONNECT connection open"
    return single_response(RawResult(data, True, False, False))


# ---------------------------------------------------------------------------------------------
# Access log
# ---------------------------------------------------------------------------------------------


def wait_record(
    proxy: ProxyProcess,
    timeout: float = 10.0,
    **fields: Any,
) -> dict[str, Any]:
    """The one access-log record whose fields equal `fields` (waits, bounded)."""

    def matches(record: Mapping[str, Any]) -> bool:
        return all(record.get(key) == value for key, value in fields.items())

    records = proxy.wait_for_records(1, timeout, predicate=matches)
    assert len(records) == 1, f"several records match {fields}: {records}"
    return records[0]


# ---------------------------------------------------------------------------------------------
# An isolated network namespace, for tests that must name a non-loopback address
# ---------------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class IsolatedNetns:
    """A new network namespace whose only interface is `lo`: an address outside loopback has
    no route there, so a connect to it fails locally and no packet can leave the machine.

    The proxy runs in it (`command` prefix for `proxy_factory`), the test DNS server is created
    in it (`dns_server()`), and test clients run in it (`run(fn, ...)`: a worker thread that
    joined the namespace; sockets belong to the namespace of the thread that creates them).
    """

    def __init__(self) -> None:
        if sys.platform != "linux":
            pytest.skip("network namespaces need Linux")
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed: cannot isolate the proxy")
        try:
            self._holder = subprocess.Popen(
                ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec cat"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            pytest.skip(f"cannot create a network namespace: {exc}")
        assert self._holder.stdout is not None
        ready, _, _ = select.select([self._holder.stdout], [], [], 10.0)
        line = self._holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            stderr = b""
            self._stop_holder()
            if self._holder.stderr is not None:
                stderr = self._holder.stderr.read()
            pytest.skip(f"cannot create a network namespace (need root): {stderr[:300]!r}")
        self.path = f"/proc/{self._holder.pid}/ns/net"
        self._executor = ThreadPoolExecutor(1, "netns", initializer=_setns, initargs=(self.path,))
        self._servers: list[DnsServer] = []

    @property
    def command(self) -> list[str]:
        """`proxy_factory(command=...)`: the egressgate command run inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", sys.executable, "-m", "egressgate"]

    def run(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
        """Call `fn(*args, **kwargs)` in a thread inside the namespace; its result."""
        return self._executor.submit(fn, *args, **kwargs).result(timeout)

    def dns_server(self) -> DnsServer:
        """A DnsServer listening on 127.0.0.1 inside the namespace (closed by `close()`)."""
        server = self.run(DnsServer)
        self._servers.append(server)
        return server

    def _stop_holder(self) -> None:
        with contextlib.suppress(OSError):
            if self._holder.stdin is not None:
                self._holder.stdin.close()
        try:
            self._holder.wait(5.0)
        except subprocess.TimeoutExpired:
            self._holder.kill()
            self._holder.wait(5.0)
        for stream in (self._holder.stdout, self._holder.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._executor.shutdown(wait=True)
        self._stop_holder()


@contextlib.contextmanager
def isolated_netns() -> Iterator[IsolatedNetns]:
    """An `IsolatedNetns`, closed on exit."""
    netns = IsolatedNetns()
    try:
        yield netns
    finally:
        netns.close()


def write_file(path: Path, chunks: Iterable[bytes]) -> Path:
    """Write `chunks` to `path`; returns it."""
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return path
