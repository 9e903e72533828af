"""Helpers of the net unit tests: a test body run on uvloop (the proxy's loop), bounded in time,
with every socket it made closed afterwards whatever happened; and bounded waits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

STEP_S = 0.01
MAX_STEPS = 300  # three seconds at most for any awaited event

Body = Callable[[list[socket.socket]], Coroutine[Any, Any, None]]


def run_on_uvloop(body: Body, timeout_s: float = 15.0) -> None:
    """Run `body(made)` on uvloop for at most `timeout_s`; then close every socket in `made`."""
    made: list[socket.socket] = []
    try:
        uvloop.run(asyncio.wait_for(body(made), timeout_s))
    finally:
        for sock in made:
            sock.close()


def nonblocking_pair(made: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    """A non-blocking socketpair, recorded in `made` for closing."""
    a, b = socket.socketpair()
    made.extend((a, b))
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def named_like(run: Callable[[], None], test: Callable[..., object]) -> Callable[[], None]:
    """`run` under the test's name and docstring. Not functools.wraps: pytest would read the
    wrapped signature and look for fixtures."""
    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


async def until(predicate: Callable[[], object]) -> None:
    for _ in range(MAX_STEPS):
        if predicate():
            return
        await asyncio.sleep(STEP_S)
    raise AssertionError("event did not arrive in time")


async def read_until_eof(sock: socket.socket) -> bytes:
    """Everything `sock` receives until its peer's EOF (or reset)."""
    data = b""
    for _ in range(MAX_STEPS):
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(STEP_S)
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("no EOF in time")
