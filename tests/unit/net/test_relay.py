"""The splice relay over real socketpairs on uvloop, with its sends, half-closes and closes
deferred to the end of the loop iteration (net/outbox.py): bytes arrive whole and in order, a
half-close passes on after the last bytes, and the relay closes both sockets when both ends
have finished. The proxy's own tunnel tests cover the same through real clients; these pin the
deferral's corner cases."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from egressgate.net.outbox import Outbox
from egressgate.net.reactor import Reactor
from egressgate.net.relay import COPY_CHUNK, Relay, RelayStats
from tests.unit.net.bounded import (
    MAX_STEPS,
    STEP_S,
    named_like,
    nonblocking_pair,
    read_until_eof,
    run_on_uvloop,
    until,
)


class Rig:
    """client ⇄ [relay] ⇄ origin: `client` and `origin` are the far ends the test drives."""

    def __init__(self, relay: Relay, client: socket.socket, origin: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.origin = origin
        self.ended: list[RelayStats] = []


Test = Callable[[Callable[[], Rig]], Coroutine[Any, Any, None]]


def _with_relay(test: Test) -> Callable[[], None]:
    """Run `test(make)` on uvloop (bounded); `make()` starts a relay between two socketpairs.
    The reactor and every socket are closed afterwards, whatever the test did."""

    async def body(made: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        reactor = Reactor(loop)
        outbox = Outbox(loop)

        def make() -> Rig:
            client_far, client_near = nonblocking_pair(made)
            origin_far, origin_near = nonblocking_pair(made)
            reactor.add(client_near.fileno(), lambda _events: None)
            reactor.add(origin_near.fileno(), lambda _events: None)
            ended: list[RelayStats] = []
            relay = Relay(reactor, outbox, client_near, origin_near, ended.append, 30.0)
            rig = Rig(relay, client_far, origin_far)
            rig.ended = ended
            relay.start()
            return rig

        try:
            await test(make)
        finally:
            reactor.close()

    return named_like(lambda: run_on_uvloop(body), test)


async def _read(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes (bounded in time)."""
    data = b""
    for _ in range(MAX_STEPS):
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(STEP_S)
            continue
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
        if len(data) >= size:
            return data
    raise AssertionError(f"only {len(data)} of {size} bytes arrived")


async def _eof(sock: socket.socket) -> None:
    assert await read_until_eof(sock) == b"", "unexpected bytes before EOF"


@_with_relay
async def test_small_exchanges_both_ways_arrive_in_order(make: Callable[[], Rig]) -> None:
    rig = make()
    for number in range(20):
        rig.client.send(b"ping %d\n" % number)
        assert await _read(rig.origin, len(b"ping %d\n" % number)) == b"ping %d\n" % number
        rig.origin.send(b"pong %d\n" % number)
        assert await _read(rig.client, len(b"pong %d\n" % number)) == b"pong %d\n" % number


@_with_relay
async def test_a_half_close_passes_on_after_the_last_bytes(make: Callable[[], Rig]) -> None:
    rig = make()
    rig.client.send(b"last words")
    rig.client.shutdown(socket.SHUT_WR)  # data and FIN arrive together
    assert await _read(rig.origin, 10) == b"last words"
    await _eof(rig.origin)
    # The other direction is still open: the origin answers after the client's FIN.
    rig.origin.send(b"the answer")
    assert await _read(rig.client, 10) == b"the answer"
    rig.origin.shutdown(socket.SHUT_WR)
    await _eof(rig.client)
    await until(lambda: rig.ended)
    assert rig.ended == [RelayStats(10, 10, "eof")]


@_with_relay
async def test_bulk_bytes_switch_to_splice_and_stay_exact(make: Callable[[], Rig]) -> None:
    rig = make()
    payload = bytes(range(256)) * (4 * COPY_CHUNK // 256 + 7)  # several full reads
    sent = 0
    received = b""
    for _ in range(MAX_STEPS * 4):
        if sent < len(payload):
            try:
                sent += rig.client.send(payload[sent : sent + COPY_CHUNK])
            except BlockingIOError:
                pass
        try:
            received += rig.origin.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
        if len(received) == len(payload):
            break
    assert received == payload


@_with_relay
async def test_many_relays_in_one_iteration_each_get_their_own_bytes(
    make: Callable[[], Rig],
) -> None:
    rigs = [make() for _ in range(16)]
    for index, rig in enumerate(rigs):
        rig.client.send(b"request %02d" % index)
    for index, rig in enumerate(rigs):
        assert await _read(rig.origin, 10) == b"request %02d" % index


@_with_relay
async def test_close_with_a_send_queued_drops_it_and_ends_once(make: Callable[[], Rig]) -> None:
    rig = make()
    await asyncio.sleep(STEP_S)  # the relay has started and drained the (empty) client side
    rig.client.send(b"in flight")
    # Drive the read by hand, in the same callback as the close: read, and its send queued
    # for the end of the iteration, when the relay is closed.
    up = rig.relay._up
    up.src_state.ready = True
    up.pump()
    assert up.queued
    rig.relay.close()
    await _eof(rig.origin)
    await _eof(rig.client)
    assert [stats.end for stats in rig.ended] == ["closed"]
