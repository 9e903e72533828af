"""Sans-IO SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), server side.

Bytes in → events out; events answered → reply bytes out. No sockets, no asyncio, no policy, no
logging. The I/O driver is proxy/socks.py.

    client                                   SocksParser.feed(data) → events
    ─────────────────────────────────────    ─────────────────────────────────────────────────
    05 n methods…                        →   MethodChosen(method)   reply: method_reply(method)
    [01 ulen user plen password]         →   Credentials(user, password)  reply: auth_reply(ok)
    05 cmd 00 atyp addr port             →   Request(host, port, address_type)
                                             reply: reply(code, bound address) after the gate

Every byte from the client is hostile until bounded: each message has a fixed structure whose
largest form is known (a greeting ≤ 257 bytes, the sub-negotiation ≤ 513, a request ≤ 262), and
the parser never buffers more than the message it is reading. Bytes after the request belong to
the tunnel (`rest()`); after an error or the request, `feed` accepts nothing more. Anything the
RFCs do not allow ends the events with `Rejected`: the `Reason` for the log and the reply to send
(if the client can still understand one). A SOCKS4/4a client (first byte 4) gets a SOCKS4 "request
rejected" reply instead of being misparsed as SOCKS5.

Clients may send the next message before our reply to the previous one (optimistic clients):
`feed` returns every event the bytes complete, in order, and the driver answers them in order.
A driver that refuses `Credentials` must stop there and not look at the events after it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from egressgate.errors import Reason
from egressgate.values import immutable

VERSION = 5
SOCKS4_VERSION = 4
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version

# The largest message of each phase (RFC 1928 §3, §4; RFC 1929 §2).
MAX_GREETING_BYTES = 2 + 255
MAX_AUTH_BYTES = 3 + 255 + 255
MAX_REQUEST_BYTES = 4 + 1 + 255 + 2


class Method(IntEnum):
    """Authentication methods (RFC 1928 §3)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USER_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class ReplyCode(IntEnum):
    """REP field of a SOCKS5 reply (RFC 1928 §6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06  # used for every timeout (DNS, connect)
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


# ---- events
@dataclass(frozen=True, slots=True)
class MethodChosen:
    """The greeting is read; answer with `method_reply(method)`. NO_ACCEPTABLE: the client
    offered no method we accept (it must close; we close after the reply)."""

    method: Method


@immutable
class Credentials:
    """The RFC 1929 sub-negotiation: verify, answer with `auth_reply(ok)`, close if not ok."""

    user: str
    password: str


@immutable
class Request:
    """A CONNECT request. `host` is text as the client sent it: a name (DOMAINNAME), or the
    canonical text of an IPv4/IPv6 address; either way a destination to judge, never to trust."""

    host: str
    port: int
    address_type: AddressType


@immutable
class Rejected:
    """The client's bytes are not an acceptable SOCKS5 exchange: always the last event.

    `reply`: the bytes to send before closing (a reply the client can read in the phase it is
    in), or b"" when nothing it could understand can be sent."""

    reason: Reason
    detail: str
    reply: bytes = b""


Event = MethodChosen | Credentials | Request | Rejected


class SocksError(Exception):
    """Raised inside the parser; `feed` returns it as a Rejected event after the events the
    bytes completed before it (an optimistic client's greeting is answered first)."""

    def __init__(self, reason: Reason, detail: str, reply: bytes = b"") -> None:
        self.rejected = Rejected(reason, detail, reply)
        super().__init__(f"{reason.value}: {detail}")


# ---- replies (prebuilt where they are constant)
_METHOD_REPLIES = {m: bytes((VERSION, m)) for m in Method}
AUTH_OK = bytes((AUTH_VERSION, 0x00))
AUTH_FAILED = bytes((AUTH_VERSION, 0x01))
# SOCKS4 "request rejected or failed" (VN 0, CD 91, DSTPORT and DSTIP ignored by clients).
SOCKS4_REJECTED = bytes((0x00, 0x5B)) + bytes(6)
_NO_ADDRESS = bytes((AddressType.IPV4,)) + bytes(6)  # 0.0.0.0:0
_FAILURE_REPLIES = {code: bytes((VERSION, code, 0x00)) + _NO_ADDRESS for code in ReplyCode}


def method_reply(method: Method) -> bytes:
    return _METHOD_REPLIES[method]


def auth_reply(ok: bool) -> bytes:
    return AUTH_OK if ok else AUTH_FAILED


# ATYP + BND.ADDR of the proxy's own addresses (few: its outgoing interfaces), by their text;
# bounded. Parsing the address with `ipaddress` for every tunnel cost as much as the rest of
# the reply.
_BOUND_ADDRESSES: dict[str, bytes] = {}
_MAX_BOUND_ADDRESSES = 64


def reply(code: ReplyCode, bound: tuple[str, int] | None = None) -> bytes:
    """A SOCKS5 reply; `bound`: the proxy's address and port of the upstream connection
    (BND.ADDR, BND.PORT), reported on success; 0.0.0.0:0 otherwise."""
    if bound is None:
        return _FAILURE_REPLIES[code]
    host, port = bound[0], bound[1]
    encoded = _BOUND_ADDRESSES.get(host)
    if encoded is None:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        atyp = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
        encoded = bytes((atyp,)) + address.packed
        if len(_BOUND_ADDRESSES) >= _MAX_BOUND_ADDRESSES:
            _BOUND_ADDRESSES.clear()
        _BOUND_ADDRESSES[host] = encoded
    return bytes((VERSION, code, 0x00)) + encoded + port.to_bytes(2, "big")


# Which SOCKS5 reply code says what a Reason says (RFC 1928 §6). Policy refusals are 2; a name
# that does not resolve and an unreachable address are 4; every timeout is 6; the rest 1.
_REPLY_FOR_REASON = {
    Reason.DNS_NXDOMAIN: ReplyCode.HOST_UNREACHABLE,
    Reason.DNS_NO_ADDRESS: ReplyCode.HOST_UNREACHABLE,
    Reason.DNS_FAILURE: ReplyCode.HOST_UNREACHABLE,
    Reason.UPSTREAM_UNREACHABLE: ReplyCode.HOST_UNREACHABLE,
    Reason.UPSTREAM_REFUSED: ReplyCode.CONNECTION_REFUSED,
    Reason.DNS_TIMEOUT: ReplyCode.TTL_EXPIRED,
    Reason.UPSTREAM_TIMEOUT: ReplyCode.TTL_EXPIRED,
    Reason.SOCKS_COMMAND_UNSUPPORTED: ReplyCode.COMMAND_NOT_SUPPORTED,
    Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED: ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
}


def reply_code(reason: Reason) -> ReplyCode:
    """The reply code for a refusal or failure."""
    code = _REPLY_FOR_REASON.get(reason)
    if code is not None:
        return code
    if reason.is_policy:  # 403 refusals and 407 (credentials that no longer pass)
        return ReplyCode.NOT_ALLOWED
    return ReplyCode.GENERAL_FAILURE


# ---- the parser
# Phases as plain ints, and the enum members the hot path compares with as module globals: on
# Python 3.11 an Enum class attribute lookup costs ~0.2 µs, and a handshake made dozens of them
# (measured: 15 µs per greeting + request on the bench machine under load, ~3 µs after).
_GREETING, _AUTH, _REQUEST, _DONE = range(4)
_NO_AUTH = Method.NO_AUTH
_USER_PASSWORD = Method.USER_PASSWORD
_CONNECT = int(Command.CONNECT)
_IPV4, _DOMAIN, _IPV6 = int(AddressType.IPV4), int(AddressType.DOMAIN), int(AddressType.IPV6)
_ADDRESS_TYPES = {int(t): t for t in AddressType}
# Events are frozen values: the few a greeting can produce are built once.
_CHOSEN = {m: MethodChosen(m) for m in Method}
# login → {greeting: (method reply, next phase)}: filled below the class, by the class.
_QUICK_GREETINGS: dict[bool, dict[bytes, tuple[bytes, int]]] = {False: {}, True: {}}


class SocksParser:
    """One client's SOCKS5 handshake. `login`: the proxy checks user names and passwords
    (`auth` is configured), so only USER_PASSWORD is accepted; otherwise NO_AUTH is preferred
    and USER_PASSWORD accepted (credentials then carry no weight: nothing checks them)."""

    __slots__ = ("_buffer", "_login", "_over", "_phase", "_quick", "_rest", "bytes_read")

    def __init__(self, login: bool) -> None:
        self._login = login
        self._quick = _QUICK_GREETINGS[login]
        self._phase = _GREETING
        self._buffer = b""
        self._rest = b""
        self._over = False  # rejected, or no acceptable method: no tunnel will follow
        self.bytes_read = 0  # bytes of the handshake seen, for the "sent nothing" case

    @property
    def login_required(self) -> bool:
        return self._login

    @property
    def done(self) -> bool:
        return self._phase == _DONE

    @property
    def started(self) -> bool:
        """Some bytes of the handshake arrived."""
        return self.bytes_read > 0

    def rest(self) -> bytes:
        """Bytes the client sent after its request: the start of the tunnel's stream."""
        return self._rest

    # ---- the lockstep client's two messages in one step each (the results `feed` gives)
    def quick_greeting(self, data: bytes) -> bytes | None:
        """When `data` is exactly one of the greetings real clients send (one or two of NO_AUTH
        and USER_PASSWORD: curl, PySocks, git, `nc -X 5`) and it gets an acceptable method:
        take it, and return the method reply to send. Otherwise None, nothing changed: `feed`
        it. The table is `feed`'s own answers for those bytes (_quick_greetings below), and
        a property test compares the two for any input."""
        if self._phase != _GREETING or self._buffer:
            return None
        known = self._quick.get(data)
        if known is None:
            return None
        self.bytes_read += len(data)
        self._phase = known[1]
        return known[0]

    def quick_request(self, data: bytes) -> Request | None:
        """When `data` is exactly one whole CONNECT request to a UTF-8 name or an IPv4 address
        and nothing after it: the Request `feed` would give. Otherwise None, nothing changed:
        `feed` it."""
        if self._phase != _REQUEST or self._buffer:
            return None
        head = data[:4]
        if head == _CONNECT_DOMAIN:
            size = len(data)
            if size < 7 or size != 7 + data[4]:
                return None
            try:
                host = data[5:-2].decode("utf-8")
            except UnicodeDecodeError:
                return None
            request = Request(host, (data[-2] << 8) | data[-1], _DOMAIN_TYPE)
        elif head == _CONNECT_IPV4 and len(data) == 10:
            host = ".".join(map(str, data[4:8]))  # what str(IPv4Address) writes
            request = Request(host, (data[8] << 8) | data[9], _IPV4_TYPE)
        else:
            return None
        self.bytes_read += len(data)
        self._phase = _DONE
        return request

    def feed(self, data: bytes) -> list[Event]:
        """Every event `data` completes, in order; a Rejected event ends the exchange."""
        if self._phase == _DONE:
            if not self._over:
                self._rest += data  # tunnel bytes (the driver stops reading after the request)
            return []
        self.bytes_read += len(data)
        buffer = self._buffer + data if self._buffer else data
        events: list[Event] = []
        try:
            while buffer:  # every message needs at least one more byte
                phase = self._phase
                if phase == _GREETING:
                    step = self._greeting(buffer)
                elif phase == _AUTH:
                    step = self._auth(buffer)
                elif phase == _REQUEST:
                    step = self._request(buffer)
                else:
                    break
                if step is None:
                    break
                event, used = step
                buffer = buffer[used:]
                events.append(event)
        except SocksError as exc:
            self._phase = _DONE
            self._buffer = b""
            self._over = True
            events.append(exc.rejected)
            return events
        if self._phase == _DONE:
            self._buffer = b""
            if not self._over:
                self._rest = buffer
        else:
            self._buffer = buffer
        return events

    def _greeting(self, buffer: bytes) -> tuple[Event, int] | None:
        version = buffer[0]
        if version != VERSION:
            raise _version_error(version)
        if len(buffer) < 2:
            return None
        count = buffer[1]
        if count == 0:
            raise SocksError(
                Reason.BAD_REQUEST,
                "the SOCKS5 greeting offers no authentication method",
                method_reply(Method.NO_ACCEPTABLE),
            )
        end = 2 + count
        if len(buffer) < end:
            return None
        offered = buffer[2:end]
        if self._login:
            method = _USER_PASSWORD if _USER_PASSWORD in offered else None
        elif _NO_AUTH in offered:
            method = _NO_AUTH
        elif _USER_PASSWORD in offered:
            method = _USER_PASSWORD
        else:
            method = None
        if method is None:
            self._phase = _DONE
            self._over = True
            return _CHOSEN[Method.NO_ACCEPTABLE], end
        self._phase = _AUTH if method is _USER_PASSWORD else _REQUEST
        return _CHOSEN[method], end

    def _auth(self, buffer: bytes) -> tuple[Event, int] | None:
        if buffer[0] != AUTH_VERSION:
            raise SocksError(
                Reason.BAD_REQUEST,
                f"unknown username/password sub-negotiation version {buffer[0]} (RFC 1929: 1)",
                AUTH_FAILED,
            )
        if len(buffer) < 2:
            return None
        user_end = 2 + buffer[1]
        if len(buffer) < user_end + 1:
            return None
        password_end = user_end + 1 + buffer[user_end]
        if len(buffer) < password_end:
            return None
        try:
            user = buffer[2:user_end].decode("utf-8")
            password = buffer[user_end + 1 : password_end].decode("utf-8")
        except UnicodeDecodeError:
            # Stored credentials are text: bytes that are not UTF-8 cannot match any of them.
            user, password = "", ""
        self._phase = _REQUEST
        return Credentials(user, password), password_end

    def _request(self, buffer: bytes) -> tuple[Event, int] | None:
        # Each fixed field is judged as soon as it arrives: a hostile client learns early.
        if buffer[0] != VERSION:
            raise _request_version_error(buffer[0])
        size = len(buffer)
        if size < 2:
            return None
        command = buffer[1]
        if command != _CONNECT:
            raise SocksError(
                Reason.SOCKS_COMMAND_UNSUPPORTED,
                f"SOCKS5 command {_command_name(command)} is not supported (only CONNECT)",
                reply(ReplyCode.COMMAND_NOT_SUPPORTED),
            )
        if size < 3:
            return None
        if buffer[2] != 0:
            raise SocksError(
                Reason.BAD_REQUEST,
                f"the reserved byte of the SOCKS5 request is {buffer[2]}, not 0",
                reply(ReplyCode.GENERAL_FAILURE),
            )
        if size < 4:
            return None
        atyp = buffer[3]
        if atyp == _DOMAIN:
            if size < 5:
                return None
            end = 5 + buffer[4]
        elif atyp == _IPV4:
            end = 4 + 4
        elif atyp == _IPV6:
            end = 4 + 16
        else:
            raise SocksError(
                Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED,
                f"SOCKS5 address type {atyp} is not one of 1 (IPv4), 3 (name), 4 (IPv6)",
                reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        if size < end + 2:
            return None
        port = (buffer[end] << 8) | buffer[end + 1]
        if atyp == _DOMAIN:
            try:
                host = buffer[5:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _not_a_name(buffer[5:end]) from None
        elif atyp == _IPV4:
            host = ".".join(map(str, buffer[4:end]))  # what str(IPv4Address) writes
        else:
            host = ipaddress.IPv6Address(buffer[4:end]).compressed
        self._phase = _DONE
        return Request(host, port, _ADDRESS_TYPES[atyp]), end + 2


def _not_a_name(raw: bytes) -> SocksError:
    """The DOMAINNAME is not text. Names are ASCII (IDNA names arrive as punycode or UTF-8);
    anything else cannot be a name we would judge the same way twice: refused, not guessed."""
    return SocksError(
        Reason.HOST_NOT_ALLOWED,
        f"the SOCKS5 destination name is not UTF-8: {raw[:64]!r}",
        reply(ReplyCode.NOT_ALLOWED),
    )


def _command_name(command: int) -> str:
    try:
        return f"{Command(command).name} ({command})"
    except ValueError:
        return str(command)


def _version_error(version: int) -> SocksError:
    if version == SOCKS4_VERSION:
        return SocksError(
            Reason.SOCKS_VERSION_UNSUPPORTED,
            "SOCKS4/4a is not supported: use SOCKS5 (socks5h://)",
            SOCKS4_REJECTED,
        )
    return SocksError(Reason.BAD_REQUEST, f"not a SOCKS5 greeting (first byte {version:#04x})")


def _request_version_error(version: int) -> SocksError:
    return SocksError(
        Reason.BAD_REQUEST,
        f"the SOCKS5 request has version {version}, not 5",
        reply(ReplyCode.GENERAL_FAILURE),
    )


# ---- the quick path's tables, worked out by the general parser itself
_CONNECT_DOMAIN = bytes((VERSION, Command.CONNECT, 0, AddressType.DOMAIN))
_CONNECT_IPV4 = bytes((VERSION, Command.CONNECT, 0, AddressType.IPV4))
_DOMAIN_TYPE = AddressType.DOMAIN
_IPV4_TYPE = AddressType.IPV4
# Greetings offering one or two of NO_AUTH (0) and USER_PASSWORD (2), as real clients send them.
COMMON_GREETINGS = (b"\x05\x01\x00", b"\x05\x01\x02", b"\x05\x02\x00\x02", b"\x05\x02\x02\x00")


def _quick_greetings(login: bool) -> dict[bytes, tuple[bytes, int]]:
    """greeting → (method reply, next phase) for the common greetings `feed` answers with an
    acceptable method (NO_ACCEPTABLE takes the general path, which ends the session)."""
    table: dict[bytes, tuple[bytes, int]] = {}
    for greeting in COMMON_GREETINGS:
        parser = SocksParser(login)
        events = parser.feed(greeting)
        if len(events) == 1 and isinstance(events[0], MethodChosen):
            method = events[0].method
            if method is not Method.NO_ACCEPTABLE:
                table[greeting] = (method_reply(method), parser._phase)
    return table


_QUICK_GREETINGS.update({login: _quick_greetings(login) for login in (False, True)})
