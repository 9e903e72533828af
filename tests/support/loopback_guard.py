"""A guard that stops the test process from sending anything to a non-loopback address.

The project's tests may only talk to 127.0.0.0/8 and ::1. `LoopbackGuard.install()` wraps
`socket.socket.connect`, `connect_ex`, `sendto` and `sendmsg` (every Python-level socket, so
also `ssl.SSLSocket`, asyncio's selector loop, `socket.create_connection`, requests, httpx and
dnslib) and the name-resolution functions `socket.getaddrinfo`, `gethostbyname` and
`gethostbyname_ex` (which would otherwise ask the system's, non-loopback, resolver). A call whose
destination is not loopback raises `LoopbackViolation` *before* the real call runs, so nothing
leaves the machine, and is also recorded in `violations`, so that a violation swallowed by
library code (a retry loop, a background thread) still fails the test (see tests/conftest.py).

Allowed: AF_UNIX sockets; IPv4 127.0.0.0/8; IPv6 ::1 and IPv4-mapped loopback; the name
`localhost` (answered from /etc/hosts; any other name, even `x.localhost`, would make the C library
ask the system's DNS server); passive lookups (host None or "").
Processes started by tests (curl, openssl, the proxy) are not covered: point them only at loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost"})


class LoopbackViolation(OSError):
    """Raised instead of a connect/send/lookup whose destination is not loopback."""


@dataclass(frozen=True)
class Violation:
    """One refused call: which function, the destination it was given, and why it was refused."""

    call: str
    destination: str
    reason: str


def is_loopback_host(host: object) -> bool:
    """True if `host` (an IP literal, possibly with an IPv6 %scope, or a name) is loopback."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower() in LOOPBACK_NAMES
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def check_destination(family: int, address: object) -> str | None:
    """Why sending from a socket of `family` to `address` is refused, or None if it is allowed."""
    if family == getattr(socket, "AF_UNIX", object()):
        return None
    if family not in (socket.AF_INET, socket.AF_INET6):
        return f"socket family {family!r} is not allowed in tests"
    if not isinstance(address, tuple) or not address:
        return f"unexpected address {address!r}"
    host = address[0]
    if is_loopback_host(host):
        return None
    return f"{host!r} is not a loopback address (tests may only reach 127.0.0.0/8 and ::1)"


class LoopbackGuard:
    """Installs/uninstalls the wrappers; keeps the refused calls in `violations`."""

    _SOCKET_METHODS = ("connect", "connect_ex", "sendto", "sendmsg")
    _RESOLVERS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex")

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._lock = threading.Lock()
        # The real functions, looked up at call time by the wrappers (a test may replace one with
        # a recorder to prove that a refused call never reaches it).
        self.real: dict[str, Callable[..., Any]] = {}
        self.installed = False

    # -- bookkeeping -----------------------------------------------------------------------------

    def _refuse(self, call: str, destination: object, reason: str) -> LoopbackViolation:
        violation = Violation(call=call, destination=repr(destination), reason=reason)
        with self._lock:
            self.violations.append(violation)
        return LoopbackViolation(f"loopback guard: {call}({destination!r}) refused: {reason}")

    def take_violations(self) -> list[Violation]:
        """Return and forget the violations recorded so far."""
        with self._lock:
            taken, self.violations = self.violations, []
        return taken

    @contextlib.contextmanager
    def expect_violations(self) -> Iterator[list[Violation]]:
        """For tests of the guard itself: collect (and forgive) the violations made in the block."""
        before = self.take_violations()
        collected: list[Violation] = []
        try:
            yield collected
        finally:
            collected.extend(self.take_violations())
            with self._lock:
                self.violations[:0] = before

    # -- install ---------------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap the socket methods and resolver functions (idempotent)."""
        if self.installed:
            return
        for name in self._SOCKET_METHODS:
            self.real[name] = getattr(socket.socket, name)
        for name in self._RESOLVERS:
            self.real[name] = getattr(socket, name)
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            guard._check_socket(sock, "connect", address)
            guard.real["connect"](sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard._check_socket(sock, "connect_ex", address)
            return int(guard.real["connect_ex"](sock, address))

        def sendto(sock: socket.socket, data: Any, *args: Any) -> int:
            if args:
                guard._check_socket(sock, "sendto", args[-1])
            return int(guard.real["sendto"](sock, data, *args))

        def sendmsg(sock: socket.socket, buffers: Any, *args: Any) -> int:
            if len(args) >= 3 and args[2] is not None:
                guard._check_socket(sock, "sendmsg", args[2])
            return int(guard.real["sendmsg"](sock, buffers, *args))

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            guard._check_name("getaddrinfo", host)
            return guard.real["getaddrinfo"](host, *args, **kwargs)

        def gethostbyname(host: Any) -> Any:
            guard._check_name("gethostbyname", host)
            return guard.real["gethostbyname"](host)

        def gethostbyname_ex(host: Any) -> Any:
            guard._check_name("gethostbyname_ex", host)
            return guard.real["gethostbyname_ex"](host)

        wrappers: dict[str, Callable[..., Any]] = {
            "connect": connect,
            "connect_ex": connect_ex,
            "sendto": sendto,
            "sendmsg": sendmsg,
        }
        for name, wrapper in wrappers.items():
            wrapper.__name__ = name
            wrapper.__qualname__ = f"socket.{name}"
            setattr(socket.socket, name, wrapper)
        socket.getaddrinfo = getaddrinfo
        socket.gethostbyname = gethostbyname
        socket.gethostbyname_ex = gethostbyname_ex
        self.installed = True

    def uninstall(self) -> None:
        """Put the real functions back."""
        if not self.installed:
            return
        for name in self._SOCKET_METHODS:
            setattr(socket.socket, name, self.real[name])
        for name in self._RESOLVERS:
            setattr(socket, name, self.real[name])
        self.installed = False

    # -- checks ----------------------------------------------------------------------------------

    def _check_socket(self, sock: socket.socket, call: str, address: object) -> None:
        reason = check_destination(sock.family, address)
        if reason is not None:
            raise self._refuse(call, address, reason)

    def _check_name(self, call: str, host: object) -> None:
        if host is None or host in ("", b""):
            return  # a passive lookup (bind to the wildcard address): no query is sent
        if not is_loopback_host(host):
            raise self._refuse(
                call, host, "only loopback literals and 'localhost' may be resolved in tests"
            )


GUARD = LoopbackGuard()
"""The process-wide guard that tests/conftest.py installs for the whole session."""
