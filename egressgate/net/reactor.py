"""A private edge-triggered epoll for the raw-socket tunnel path, driven by the asyncio loop.

Why: uvloop's add_reader/add_writer create and destroy a libuv poll handle per call, and each
handle costs an ioctl plus four epoll_ctl calls (libuv probes every new fd with ADD+DEL). A
CONNECT tunnel changes interest four or five times (first read, connect, ClientHello, relay),
which on the bench rig was ~24 epoll_ctl and ~6 ioctl syscalls per tunnel, more kernel time
than the tunnel's own socket calls. Here every socket is added once, edge-triggered, and leaves
the set by itself when it is closed; only a rare back-pressure wait adds EPOLLOUT to a client.

The epoll fd itself sits in the asyncio loop as one reader; each wake-up dispatches a batch.

Edge-triggered contract for handlers: an event means "something changed"; a handler must keep
reading until EAGAIN (or a short recv, unless the event carried CLOSING: then the EOF is still
to be read) before it may wait for the next event, and must not assume an event it did not ask
for means anything (spurious events are harmless no-ops).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Protocol

IN = select.EPOLLIN
OUT = select.EPOLLOUT
# Events that mean "a read will not block": data, peer FIN, error or hang-up.
READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# Events that mean the peer closed or the socket failed: the next read returns 0 or an error
# even after a short read that "emptied" the socket (that EOF raises no further edge).
CLOSING = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# Events that mean the socket failed (for a connecting socket: the connect failed).
FAILED = select.EPOLLERR | select.EPOLLHUP
# Events that mean "a write will not block" (or will fail at once).
WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_EDGE = select.EPOLLET | select.EPOLLRDHUP
BATCH = 512

Handler = Callable[[int], None]


class Readiness:
    """What the edge-triggered events said about one socket since it was last drained.

    Edge-triggered events do not repeat, so whoever owns the socket between reads (acceptor,
    tunnel phases, relay) keeps this and hands it on with the socket. `note` is itself a valid
    Handler for a phase that only needs to remember events.
    """

    __slots__ = ("closing", "ready")

    def __init__(self, ready: bool = False, closing: bool = False) -> None:
        self.ready = ready  # the socket may hold bytes (or an EOF) not yet read
        self.closing = (
            closing  # its EOF (or an error) is announced: read it even after a short read
        )

    def note(self, events: int) -> None:
        if events & CLOSING:
            self.closing = True
        if events & READABLE:
            self.ready = True

    def after_read(self, full: bool) -> None:
        """After a non-empty read: a short TCP read emptied the receive queue, so only a full
        one, or an announced EOF still to be read, leaves the socket ready."""
        self.ready = full or self.closing


class Readable(Protocol):
    def recv(self, size: int, /) -> bytes: ...


def read_ready(sock: Readable, size: int, state: Readiness) -> bytes | None:
    """One edge-triggered read of up to `size` bytes, `state` kept up to date: the bytes read
    (then `state.ready` says whether more may wait), b"" for an EOF or a failed socket, None
    when nothing was there (`state.ready` cleared: wait for the next event)."""
    try:
        data = sock.recv(size)
    except (BlockingIOError, InterruptedError):
        state.ready = False
        return None
    except OSError:
        return b""
    if data:
        state.after_read(len(data) == size)
    return data


class Reactor:
    """fd → handler(events) over one epoll; at most one handler per fd."""

    __slots__ = ("_dead", "_epoll", "_handlers", "_masks", "_owners", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Public so raw-path objects need not call asyncio.get_running_loop(), which on
        # Python 3.11 costs a getpid() syscall (its fork check) every time.
        self.loop = loop
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        # fd → who answers for an exception of its handler (see `own`).
        self._owners: dict[int, Callable[[Exception], object]] = {}
        # fds forgotten while a batch is being dispatched: their later events in the same batch
        # belong to a closed socket whose number a new socket may already have reused.
        self._dead: set[int] | None = None
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add(
        self,
        fd: int,
        handler: Handler,
        writable: bool = False,
        owner: Callable[[Exception], object] | None = None,
    ) -> None:
        """Watch fd (edge-triggered): reads always, writes too if `writable`; `owner`: see
        `own`."""
        mask = _EDGE | IN | (OUT if writable else 0)
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._masks[fd] = mask
        if owner is not None:
            self._owners[fd] = owner

    def set_handler(
        self, fd: int, handler: Handler, owner: Callable[[Exception], object] | None = None
    ) -> None:
        self._handlers[fd] = handler
        if owner is not None:
            self._owners[fd] = owner

    def want_writable(self, fd: int) -> None:
        """Also report EPOLLOUT for fd from now on (re-arms: a ready fd reports at once)."""
        mask = self._masks.get(fd)
        if mask is not None and not mask & OUT:
            mask |= OUT
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask

    def own(self, fd: int, on_error: Callable[[Exception], object]) -> None:
        """An exception in fd's handler goes to `on_error` (the tunnel answers its client and
        logs it: proxy/failsafe.py), not only to the loop's exception handler."""
        self._owners[fd] = on_error

    def forget(self, fd: int) -> None:
        """Before closing fd: drop its handler (closing the socket removes it from the epoll)."""
        owners = self._owners
        if fd in owners:
            del owners[fd]
        if self._handlers.pop(fd, None) is not None:
            del self._masks[fd]
            if self._dead is not None:
                self._dead.add(fd)

    def remove(self, fd: int) -> None:
        """Stop watching an fd that stays open (handed to another owner)."""
        if fd in self._handlers:
            self._epoll.unregister(fd)
        self.forget(fd)

    def __len__(self) -> int:
        return len(self._handlers)

    def _dispatch(self) -> None:
        events = self._epoll.poll(0, BATCH)
        dead: set[int] = set()
        self._dead = dead
        handlers = self._handlers
        try:
            for fd, mask in events:
                if fd in dead:
                    continue
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(mask)
                except Exception as exc:  # one broken handler must not lose the batch's events
                    self._failed(fd, exc)
        finally:
            self._dead = None

    def _failed(self, fd: int, exc: Exception) -> None:
        on_error = self._owners.get(fd)
        try:
            if on_error is not None:
                on_error(exc)
                return
        except Exception as second:
            exc = second
        self.loop.call_exception_handler(
            {"message": "egressgate reactor handler failed", "exception": exc}
        )

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()
        self._masks.clear()
