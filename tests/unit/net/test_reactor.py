"""The private epoll reactor over real socketpairs: events, edge semantics, fd reuse, handoff.

Run on uvloop, the loop the proxy runs on.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from egressgate.net.reactor import CLOSING, READABLE, WRITABLE, Reactor, Readiness
from tests.unit.net.bounded import named_like, nonblocking_pair, run_on_uvloop, until

Pair = Callable[[], tuple[socket.socket, socket.socket]]


def _with_reactor(
    test: Callable[[Reactor, Pair], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    """Run `test(reactor, pair)` on uvloop (bounded); `pair()` makes a non-blocking socketpair.
    The reactor and every socket made are closed afterwards, whatever the test did."""

    async def body(made: list[socket.socket]) -> None:
        reactor = Reactor(asyncio.get_running_loop())
        try:
            await test(reactor, lambda: nonblocking_pair(made))
        finally:
            reactor.close()

    return named_like(lambda: run_on_uvloop(body), test)


@_with_reactor
async def test_reports_bytes_already_waiting_when_added(reactor: Reactor, pair: Pair) -> None:
    a, b = pair()
    b.send(b"hello")
    seen: list[int] = []
    reactor.add(a.fileno(), seen.append)
    await until(lambda: seen)
    assert seen[0] & READABLE
    assert a.recv(16) == b"hello"


@_with_reactor
async def test_edge_triggered_no_repeat_until_new_bytes(reactor: Reactor, pair: Pair) -> None:
    a, b = pair()
    seen: list[int] = []
    reactor.add(a.fileno(), seen.append)
    b.send(b"x")
    await until(lambda: seen)
    # Not read: an edge-triggered watch does not report the same bytes again.
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count
    b.send(b"y")
    await until(lambda: len(seen) > count)
    assert a.recv(16) == b"xy"


@_with_reactor
async def test_peer_close_is_reported_as_closing(reactor: Reactor, pair: Pair) -> None:
    a, b = pair()
    seen: list[int] = []
    reactor.add(a.fileno(), seen.append)
    b.send(b"last")
    b.close()
    await until(lambda: any(m & CLOSING for m in seen))
    assert a.recv(16) == b"last"
    assert a.recv(16) == b""


@_with_reactor
async def test_want_writable_reports_a_writable_socket(reactor: Reactor, pair: Pair) -> None:
    a, _ = pair()
    seen: list[int] = []
    reactor.add(a.fileno(), seen.append)
    await asyncio.sleep(0.02)
    seen.clear()
    reactor.want_writable(a.fileno())
    await until(lambda: any(m & WRITABLE for m in seen))


@_with_reactor
async def test_an_fd_forgotten_mid_batch_gets_none_of_the_batchs_later_events(
    reactor: Reactor, pair: Pair
) -> None:
    pairs = [pair() for _ in range(2)]
    fds = [a.fileno() for a, _ in pairs]
    calls: list[int] = []

    def handler(index: int) -> Callable[[int], None]:
        def on_event(events: int) -> None:
            calls.append(index)
            # Whoever runs first closes the other, as a tunnel closing both its sockets does;
            # the other's event, already in this batch, must reach no one, not even a new
            # socket that reuses its number at once.
            other = 1 - index
            reactor.forget(fds[other])
            pairs[other][0].close()
            new_a, _ = pair()
            reactor.add(new_a.fileno(), lambda _events: calls.append(99))

        return on_event

    for index, fd in enumerate(fds):
        reactor.add(fd, handler(index))
    for _, peer in pairs:
        peer.send(b"x")
    await until(lambda: calls)
    await asyncio.sleep(0.05)
    assert len(calls) == 1


@_with_reactor
async def test_remove_hands_a_live_fd_back(reactor: Reactor, pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    a, b = pair()
    seen: list[int] = []
    reactor.add(a.fileno(), seen.append)
    reactor.remove(a.fileno())
    assert len(reactor) == 0
    got: asyncio.Future[bytes] = loop.create_future()

    def on_readable() -> None:
        if not got.done():
            got.set_result(a.recv(16))

    loop.add_reader(a.fileno(), on_readable)
    try:
        b.send(b"ok")
        assert await asyncio.wait_for(got, 2) == b"ok"
    finally:
        loop.remove_reader(a.fileno())
    assert not seen


@_with_reactor
async def test_a_failing_handler_does_not_lose_the_other_events(
    reactor: Reactor, pair: Pair
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    a, b = pair()
    c, d = pair()
    seen: list[int] = []

    def broken(events: int) -> None:
        raise RuntimeError("boom")

    try:
        reactor.add(a.fileno(), broken)
        reactor.add(c.fileno(), seen.append)
        b.send(b"1")
        d.send(b"2")
        await until(lambda: seen and reported)
    finally:
        loop.set_exception_handler(None)


def test_readiness_remembers_events_until_a_read_drains_the_socket() -> None:
    state = Readiness()
    assert not state.ready
    state.note(select.EPOLLOUT)  # not a read event
    assert not state.ready
    state.note(select.EPOLLIN)
    assert state.ready
    assert not state.closing
    state.after_read(full=False)  # a short read emptied the receive queue
    assert not state.ready
    state.note(select.EPOLLIN | select.EPOLLRDHUP)
    state.after_read(full=False)  # bytes gone, but the announced EOF is still to be read
    assert state.ready
    assert state.closing
    fresh = Readiness()
    fresh.note(select.EPOLLIN)
    fresh.after_read(full=True)  # a full read may have left bytes behind
    assert fresh.ready
