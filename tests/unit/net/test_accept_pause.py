"""net/listen.py AcceptPause: the listener leaves the loop for a doubling pause after an
exhausted accept and comes back by itself; a closed one never comes back."""

from __future__ import annotations

import asyncio
import socket

from egressgate.net.listen import ACCEPT_BACKOFF_FIRST_S, AcceptPause
from tests.unit.net.bounded import nonblocking_pair, run_on_uvloop


def test_pauses_double_up_to_the_maximum_and_the_listener_comes_back() -> None:
    async def body(made: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        readable, writer = nonblocking_pair(made)
        calls: list[int] = []
        pause = AcceptPause(loop, readable.fileno(), lambda: calls.append(len(calls)))
        writer.send(b"x")  # readable from now on, level-triggered: a callback per iteration
        await asyncio.sleep(0.02)
        assert calls, "not watched at first"
        assert pause.pause(0.05) is True  # the first of a run
        assert pause.backoff_s == ACCEPT_BACKOFF_FIRST_S
        seen = len(calls)
        await asyncio.sleep(0.005)
        assert len(calls) == seen, "watched while paused"
        assert pause.pause(0.05) is False
        assert pause.pause(0.05) is False
        assert pause.backoff_s == 0.04
        assert pause.pause(0.05) is False
        assert pause.backoff_s == 0.05  # capped
        await asyncio.sleep(0.1)
        assert len(calls) > seen, "not watched again after the pause"
        assert pause.recovered() == 0.05
        assert pause.backoff_s == 0.0
        assert pause.pause(0.05) is True  # a new run
        pause.close()
        seen = len(calls)
        await asyncio.sleep(0.1)
        assert len(calls) == seen, "a closed pause put the listener back"

    run_on_uvloop(body)


def test_close_stops_watching_at_once() -> None:
    async def body(made: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        readable, writer = nonblocking_pair(made)
        calls: list[int] = []
        pause = AcceptPause(loop, readable.fileno(), lambda: calls.append(1))
        pause.close()
        writer.send(b"x")
        await asyncio.sleep(0.05)
        assert not calls

    run_on_uvloop(body)
