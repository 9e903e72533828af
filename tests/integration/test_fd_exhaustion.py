"""File-descriptor exhaustion (issue 19, High 4): the proxy runs under a low RLIMIT_NOFILE
(`prlimit --nofile=N:N`) and clients open idle tunnels until it is full.

At the limit it must refuse new clients cleanly (503 too-many-connections, or a clean close;
never a hang), not spin on the readable listener, keep the admin endpoint answering (the
descriptor reserve), leak no descriptor, and serve normally again once the clients leave.
Before the fix the acceptor spun at 100 % CPU on EMFILE, queued clients got nothing, and an
EMFILE while creating the upstream socket of a CONNECT escaped and left the client wedged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.helpers_core import start_proxy
from tests.support.clients import ClientError, ConnectTunnel, open_connect_tunnel
from tests.support.dns import DnsServer
from tests.support.origin import RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.skipif(
    shutil.which("prlimit") is None or not sys.platform.startswith("linux"),
    reason="needs Linux and prlimit(1)",
)

FD_LIMIT = 160
MAX_TUNNELS = FD_LIMIT  # each tunnel holds two proxy descriptors: the limit comes first
ANSWER_TIMEOUT_S = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proxy(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    origin: RawOrigin,
    reserved_fds: int,
    **keys: Any,
) -> ProxyProcess:
    dns_server.records["origin.test"] = ["127.0.0.1"]
    return start_proxy(
        proxy_factory,
        allow=["origin.test"],
        ports=[origin.port],
        sni_check=False,
        limits={"reserved_fds": reserved_fds, "accept_backoff_max_s": 0.5},
        command=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", sys.executable, "-m", "egressgate"],
        **keys,
    )


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _echo_works(tunnel: ConnectTunnel) -> bool:
    tunnel.sock.settimeout(ANSWER_TIMEOUT_S)
    tunnel.sock.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = tunnel.sock.recv(4 - len(got))
        if not chunk:
            return False
        got += chunk
    return got == b"ping"


def _answer_or_close(proxy: ProxyProcess, authority: str) -> bytes:
    """What a new client gets at the limit: the response bytes (b"" = a clean close).
    A hang fails the test through the socket timeout."""
    with socket.create_connection(proxy.proxy_address, timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            return b""
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                return b""
            if not chunk:
                break
            data += chunk
        return data


@contextlib.contextmanager
def _tunnels() -> Iterator[list[ConnectTunnel]]:
    opened: list[ConnectTunnel] = []
    try:
        yield opened
    finally:
        for tunnel in opened:
            tunnel.close()


def _fill(proxy: ProxyProcess, authority: str, opened: list[ConnectTunnel]) -> list[Any]:
    """Open tunnels until the proxy refuses one; returns what the refusals looked like."""
    refusals: list[Any] = []
    for _ in range(MAX_TUNNELS):
        try:
            tunnel = open_connect_tunnel(proxy.proxy_address, authority, timeout=ANSWER_TIMEOUT_S)
        except ClientError as exc:  # closed without an answer: a clean close
            refusals.append(str(exc))
        except ConnectionResetError as exc:
            refusals.append(str(exc))
        else:
            if tunnel.status == 200:
                opened.append(tunnel)
                continue
            refusals.append((tunnel.status, tunnel.head.header("X-Egressgate-Reason")))
            tunnel.close()
        if len(refusals) >= 3:
            break
    return refusals


def _wait_fds(pid: int, at_most: int) -> int:
    deadline = time.monotonic() + 10.0
    count = _open_fds(pid)
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
        count = _open_fds(pid)
    return count


def _baseline(proxy: ProxyProcess, authority: str) -> int:
    """Descriptors of the idle proxy after one tunnel (lazy start-up costs paid)."""
    with open_connect_tunnel(proxy.proxy_address, authority) as tunnel:
        assert tunnel.status == 200
        assert _echo_works(tunnel)
    time.sleep(0.3)
    return _open_fds(proxy.pid)


def _assert_not_spinning(pid: int) -> None:
    before = _cpu_s(pid)
    time.sleep(1.0)
    used = _cpu_s(pid) - before
    assert used < 0.3, f"the proxy used {used:.2f} s of CPU in 1 s while exhausted"


def test_at_the_fd_limit_clients_get_503_admin_answers_and_the_proxy_recovers(
    proxy_factory: ProxyFactory, dns_server: DnsServer, raw_origin_factory: RawOriginFactory
) -> None:
    origin = raw_origin_factory(mode="echo")
    proxy = _proxy(proxy_factory, dns_server, origin, reserved_fds=16)
    authority = f"origin.test:{origin.port}"
    baseline = _baseline(proxy, authority)
    with _tunnels() as opened:
        refusals = _fill(proxy, authority, opened)
        assert opened, "no tunnel opened at all"
        assert refusals, "the proxy never refused"
        assert refusals[0] == (503, "too-many-connections"), refusals
        # Held at the limit: a new client is answered at once, not left hanging.
        answer = _answer_or_close(proxy, authority)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"too-many-connections" in answer, answer
        _assert_not_spinning(proxy.pid)
        # The reserve keeps the admin endpoint alive.
        with urllib.request.urlopen(proxy.admin_url + "/healthz", timeout=5) as response:
            assert response.status == 200
        assert all(_echo_works(t) for t in opened[:5]), "open tunnels stopped relaying"
    # Clients gone: every descriptor comes back and the proxy serves again by itself.
    assert _wait_fds(proxy.pid, baseline) <= baseline
    with open_connect_tunnel(proxy.proxy_address, authority) as tunnel:
        assert tunnel.status == 200
        assert _echo_works(tunnel)
    events = [e["event"] for e in proxy.json_events()]
    assert "fd-reserve-reached" in events


def test_emfile_on_accept_and_on_the_upstream_socket_refuses_without_spinning_or_leaking(
    proxy_factory: ProxyFactory, dns_server: DnsServer, raw_origin_factory: RawOriginFactory
) -> None:
    """reserved_fds: 0 lets the process really run out: accept() and the upstream socket()
    of a CONNECT fail with EMFILE."""
    origin = raw_origin_factory(mode="echo")
    proxy = _proxy(proxy_factory, dns_server, origin, reserved_fds=0)
    authority = f"origin.test:{origin.port}"
    baseline = _baseline(proxy, authority)
    with _tunnels() as opened:
        refusals = _fill(proxy, authority, opened)
        assert opened, "no tunnel opened at all"
        assert refusals, "the proxy never ran out"
        for refusal in refusals:  # 503 with its reason, or a clean close; never a hang
            assert not isinstance(refusal, tuple) or refusal == (503, "too-many-connections")
        answer = _answer_or_close(proxy, authority)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
        _assert_not_spinning(proxy.pid)
    assert _wait_fds(proxy.pid, baseline) <= baseline, "descriptors leaked"
    with open_connect_tunnel(proxy.proxy_address, authority) as tunnel:
        assert tunnel.status == 200
        assert _echo_works(tunnel)


# ---- the SOCKS5 listener at the same limit


def _socks_answer_or_close(proxy: ProxyProcess) -> bytes:
    """What a new SOCKS5 client gets for its greeting at the limit: the method reply, or b""
    for a clean close. A hang fails the test through the socket timeout."""
    with socket.create_connection(proxy.socks_address, timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(b"\x05\x01\x00")
            return sock.recv(16)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def _socks_echo_works(proxy: ProxyProcess, port: int) -> bool:
    name = b"origin.test"
    with socket.create_connection(proxy.socks_address, timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            return False
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = b""
        while len(reply) < 10:
            chunk = sock.recv(10 - len(reply))
            if not chunk:
                return False
            reply += chunk
        if reply[:2] != b"\x05\x00":
            return False
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"


@pytest.mark.parametrize("reserved_fds", [16, 0], ids=["reserve", "emfile"])
def test_the_socks_listener_at_the_fd_limit_closes_new_clients_without_spinning_and_recovers(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    raw_origin_factory: RawOriginFactory,
    reserved_fds: int,
) -> None:
    """With the HTTP listener's tunnels holding every descriptor, a SOCKS5 client is closed
    at once (SOCKS5 has no "busy" reply before the greeting), logged, and never left hanging;
    the listener does not spin on EMFILE; and SOCKS5 works again once descriptors free up.
    Before the fix the SOCKS listener let clients take the reserved descriptors, returned on
    EMFILE with the listener still readable (a busy loop), and logged nothing."""
    origin = raw_origin_factory(mode="echo")
    proxy = _proxy(proxy_factory, dns_server, origin, reserved_fds, socks_listen="127.0.0.1:0")
    authority = f"origin.test:{origin.port}"
    assert _socks_echo_works(proxy, origin.port)
    baseline = _baseline(proxy, authority)
    with _tunnels() as opened:
        refusals = _fill(proxy, authority, opened)
        assert opened, refusals
        assert refusals, len(opened)
        for _ in range(3):
            assert _socks_answer_or_close(proxy) == b""
        _assert_not_spinning(proxy.pid)
        assert all(_echo_works(t) for t in opened[:5]), "open tunnels stopped relaying"
    assert _wait_fds(proxy.pid, baseline) <= baseline, "descriptors leaked"
    deadline = time.monotonic() + 5.0
    while not _socks_echo_works(proxy, origin.port):  # the back-off ends by itself
        assert time.monotonic() < deadline, "the SOCKS5 listener did not recover"
        time.sleep(0.2)
    if reserved_fds:
        record = proxy.wait_for_records(
            1, 10.0, predicate=lambda r: "SOCKS5 listener" in (r.get("detail") or "")
        )[0]
        assert record["kind"] == "connection", record
        assert record["reason"] == "too-many-connections", record
    else:
        events = [e for e in proxy.json_events() if e["event"] == "fd-exhausted"]
        assert any(e.get("listener") == "socks" for e in events), events
