"""connect_first: staggered attempts over several addresses, the first to connect wins, the
losers are closed (no descriptor left behind), and one total deadline bounds the whole search.

Real loopback sockets: "blackholed" addresses are listeners whose accept queue is full (the
kernel drops further SYNs); "refused" addresses have nothing listening.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time

import pytest

from egressgate.errors import Reason, UpstreamError
from egressgate.net.connect import CONNECTION_ATTEMPT_DELAY_S, connect_first
from tests.unit.net.bounded import run_on_uvloop


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def blackhole(host: str, port: int, made: list[socket.socket]) -> None:
    listener = socket.socket()
    made.append(listener)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(0)
    for _ in range(3):  # more than the queue holds; never accepted
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((host, port))
        made.append(filler)
    time.sleep(0.2)


def live(host: str, made: list[socket.socket], port: int = 0) -> int:
    listener = socket.socket()
    made.append(listener)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    bound: int = listener.getsockname()[1]
    return bound


def addresses(*hosts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(h) for h in hosts]


def test_a_refused_address_hands_over_to_the_next_at_once() -> None:
    async def body(made: list[socket.socket]) -> None:
        port = live("127.0.4.2", made)
        started = time.monotonic()
        sock, address = await connect_first(addresses("127.0.4.1", "127.0.4.2"), port, 5, 10)
        made.append(sock)
        assert str(address) == "127.0.4.2"
        assert time.monotonic() - started < CONNECTION_ATTEMPT_DELAY_S

    run_on_uvloop(body)


def test_live_address_after_blackholed_ones_wins_and_the_losers_are_closed() -> None:
    async def body(made: list[socket.socket]) -> None:
        port = live("127.0.4.14", made)
        for i in (11, 12, 13):
            blackhole(f"127.0.4.{i}", port, made)
        before = open_fds()
        failures: list[UpstreamError] = []
        started = time.monotonic()
        sock, address = await connect_first(
            addresses("127.0.4.11", "127.0.4.12", "127.0.4.13", "127.0.4.14"),
            port,
            5,
            10,
            failures.append,
        )
        elapsed = time.monotonic() - started
        made.append(sock)
        assert str(address) == "127.0.4.14"
        assert 3 * CONNECTION_ATTEMPT_DELAY_S - 0.05 <= elapsed < 1.5, elapsed
        assert failures == []  # the blackholed attempts were cancelled, not failed
        await until_fds(before + 1)  # only the winner is open

    run_on_uvloop(body)


async def until_fds(count: int) -> None:
    for _ in range(100):
        if open_fds() == count:
            return
        await asyncio.sleep(0.01)
    assert open_fds() == count


def test_all_blackholed_ends_at_the_total_deadline_with_nothing_left_open() -> None:
    async def body(made: list[socket.socket]) -> None:
        port = live("127.0.4.39", made)
        hosts = [f"127.0.4.{i}" for i in range(21, 31)]
        for host in hosts:
            blackhole(host, port, made)
        before = open_fds()
        started = time.monotonic()
        with pytest.raises(UpstreamError) as failure:
            await connect_first(addresses(*hosts), port, 5, 1.0)
        elapsed = time.monotonic() - started
        assert failure.value.reason is Reason.UPSTREAM_TIMEOUT
        assert "within 1s" in failure.value.detail, failure.value.detail
        assert 0.95 <= elapsed < 1.5, elapsed
        await until_fds(before)

    run_on_uvloop(body)


def test_every_address_refused_raises_the_last_error() -> None:
    async def body(made: list[socket.socket]) -> None:
        port = live("127.0.4.49", made)
        with pytest.raises(UpstreamError) as failure:
            await connect_first(addresses("127.0.4.41", "127.0.4.42"), port, 5, 10)
        assert failure.value.reason is Reason.UPSTREAM_REFUSED

    run_on_uvloop(body)
