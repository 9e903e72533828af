"""Internal helpers shared by the test servers: an asyncio loop in a thread, a recorder, sockets."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from tests.support.loopback_guard import is_loopback_host

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running forever in its own daemon thread until `stop()`.

    Servers register their connection-handler tasks with `track()` so that `stop()` can cancel
    and await them, and close every transport, before the loop is closed (an unclosed transport
    would surface as a ResourceWarning, which this project's pytest config turns into an error).
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the loop and wait (bounded) for its result from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def track(self) -> None:
        """Called from inside a task running on this loop: cancel it on `stop()`."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start `coro` as a tracked task (call from the loop thread)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self, before: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run `before()` on the loop, cancel tracked tasks (bounded wait), stop and close."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(before(), 5.0)
            tasks = [t for t in self._tasks if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.loop.shutdown_asyncgens(), 2.0)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(shutdown(), timeout=15.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
        if not self._thread.is_alive():
            self.loop.close()


class Recorder(Generic[T]):
    """A thread-safe append-only list that other threads can wait on (bounded)."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._cond = threading.Condition()

    def append(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def notify(self) -> None:
        """Wake waiters after an item was changed in place."""
        with self._cond:
            self._cond.notify_all()

    def snapshot(self) -> list[T]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_until(
        self, predicate: Callable[[list[T]], bool], timeout: float, what: str
    ) -> list[T]:
        """Wait until `predicate(items)` holds; raise AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._items):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    have = repr(self._items)
                    if len(have) > 4000:
                        have = have[:4000] + f"... ({len(self._items)} items)"
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; have {have}"
                    )
                self._cond.wait(remaining)
            return list(self._items)


def check_loopback_bind_host(host: str) -> None:
    """Refuse to run a test server anywhere but on a loopback literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"test servers bind to an IP literal, not {host!r}") from None
    if not is_loopback_host(host):
        raise ValueError(f"test servers bind to loopback only, not {host!r}")


def bind_listener(host: str, backlog: int = 1024, port: int = 0) -> socket.socket:
    """A TCP listening socket on `host` (a loopback literal), `port` (0: chosen by the kernel;
    a fixed one such as 443 for the transparent listener's tests, which need root)."""
    check_loopback_bind_host(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0), as asyncio's own host/port servers get from getaddrinfo: only
    # then does asyncio set TCP_NODELAY on accepted connections. With proto 0 it did not, and
    # Nagle held a response body written after its head until the peer's delayed ACK (~40 ms
    # per kept-alive response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def format_hostport(host: str, port: int) -> str:
    """'127.0.0.1:80' or '[::1]:80'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> tuple[str, int]:
    """Inverse of `format_hostport` ('[::1]:80' → ('::1', 80))."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":"))
    host, _, port = text.rpartition(":")
    return host, int(port)


def peer_of(writer: asyncio.StreamWriter) -> tuple[str, int]:
    """The (host, port) of the other end of a stream connection."""
    peer = writer.get_extra_info("peername")
    return (str(peer[0]), int(peer[1])) if peer else ("?", 0)


def local_of(writer: asyncio.StreamWriter) -> tuple[str, int]:
    """The (host, port) of our end of a stream connection."""
    local = writer.get_extra_info("sockname")
    return (str(local[0]), int(local[1])) if local else ("?", 0)


def abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
