"""Outbox/Output over real socketpair transports on uvloop: when bytes leave, in what order,
and what close, abort and a dead peer do to queued bytes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from egressgate.net.outbox import Outbox, Output
from tests.unit.net.bounded import STEP_S, named_like, read_until_eof, run_on_uvloop

MakeOutput = Callable[[], Coroutine[Any, Any, tuple[Output, socket.socket]]]


def _with_outbox(
    test: Callable[[Outbox, MakeOutput], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    """Run `test(outbox, make)` on uvloop (bounded). `make()` returns an Output on a real
    transport and the non-blocking peer socket that receives its bytes; all are closed after."""

    async def body(made: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop)
        transports: list[asyncio.BaseTransport] = []

        async def make() -> tuple[Output, socket.socket]:
            ours, peer = socket.socketpair()
            peer.setblocking(False)
            made.append(peer)  # `ours` belongs to the transport, which closes it
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
            transports.append(transport)
            return Output(outbox, transport), peer

        try:
            await test(outbox, make)
        finally:
            for transport in transports:
                transport.abort()

    return named_like(lambda: run_on_uvloop(body), test)


def _received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


@_with_outbox
async def test_writes_leave_together_at_the_end_of_the_iteration(
    outbox: Outbox, make: MakeOutput
) -> None:
    output, peer = await make()
    output.write(b"HTTP/1.1 200 OK\r\n")
    output.writelines([b"Content-Length: 2\r\n", b"\r\n"])
    output.write(b"ok")
    assert output.pending == 40
    assert _received(peer) == b""  # nothing handed to the kernel yet
    await asyncio.sleep(0)  # one iteration: the outbox's callback runs
    await asyncio.sleep(STEP_S)
    assert _received(peer) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert output.pending == 0


@_with_outbox
async def test_each_transport_keeps_its_own_order(outbox: Outbox, make: MakeOutput) -> None:
    (first, first_peer), (second, second_peer) = await make(), await make()
    for number in range(50):
        first.write(b"a%d," % number)
        second.write(b"b%d," % number)
    await asyncio.sleep(0)
    await asyncio.sleep(STEP_S)
    assert _received(first_peer) == b"".join(b"a%d," % n for n in range(50))
    assert _received(second_peer) == b"".join(b"b%d," % n for n in range(50))


@_with_outbox
async def test_writes_after_a_flush_are_queued_for_the_next_iteration(
    outbox: Outbox, make: MakeOutput
) -> None:
    output, peer = await make()
    output.write(b"one ")
    await asyncio.sleep(0)
    output.write(b"two")
    await asyncio.sleep(0)
    await asyncio.sleep(STEP_S)
    assert _received(peer) == b"one two"


@_with_outbox
async def test_flush_hands_queued_bytes_over_at_once(outbox: Outbox, make: MakeOutput) -> None:
    output, peer = await make()
    output.write(b"before the relay")
    output.flush()
    await asyncio.sleep(STEP_S)
    assert _received(peer) == b"before the relay"
    outbox.flush()  # the scheduled round finds nothing left: nothing is written twice
    await asyncio.sleep(STEP_S)
    assert _received(peer) == b""


@_with_outbox
async def test_close_writes_what_is_queued_then_ends(outbox: Outbox, make: MakeOutput) -> None:
    output, peer = await make()
    output.write(b"the last answer")
    output.close()
    assert await read_until_eof(peer) == b"the last answer"


@_with_outbox
async def test_abort_drops_what_is_queued(outbox: Outbox, make: MakeOutput) -> None:
    output, peer = await make()
    output.write(b"never sent")
    output.abort()
    assert await read_until_eof(peer) == b""
    assert output.pending == 0


@_with_outbox
async def test_a_closed_transport_drops_its_bytes_and_the_others_still_go(
    outbox: Outbox, make: MakeOutput
) -> None:
    (gone, _), (alive, alive_peer) = await make(), await make()
    gone.write(b"to nobody")
    alive.write(b"to someone")
    assert gone.transport is not None
    gone.transport.close()
    await asyncio.sleep(0)
    await asyncio.sleep(STEP_S)
    assert _received(alive_peer) == b"to someone"


class _BrokenTransport(asyncio.Transport):
    """A transport whose write fails: pure logic, to show one failure stays contained."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("broken")

    def abort(self) -> None:
        self.aborted = True


@_with_outbox
async def test_a_failing_write_is_reported_and_does_not_hold_back_the_others(
    outbox: Outbox, make: MakeOutput
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    broken_transport = _BrokenTransport()
    broken = Output(outbox, broken_transport)
    alive, alive_peer = await make()
    broken.write(b"x")
    alive.write(b"still delivered")
    await asyncio.sleep(0)
    await asyncio.sleep(STEP_S)
    assert _received(alive_peer) == b"still delivered"
    assert broken_transport.aborted
    assert broken.transport is None
    assert [type(c["exception"]) for c in reported] == [RuntimeError]
