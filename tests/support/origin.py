"""Real origin servers for tests: `Origin` (HTTP/1.1, plain or TLS) and `RawOrigin` (TCP).

Both run an asyncio loop in their own thread, bind a loopback literal (127.0.0.1 by default;
127.0.0.x and ::1 too) on port 0, and RECORD what reached them: every TCP accept (so that a
"canary" origin can prove that nothing, not even a bare connection, reached it) and, for
`Origin`, every request (method, target as sent, headers in order with their original case,
body length and sha256, peer address, connection id).

`Origin` endpoints (any method unless said; HEAD gets the GET headers without the body; any
request body is consumed and hashed; `Expect: 100-continue` is answered with `100 Continue`
before a body is read, unless the query has `continue=0`):

    /                    "hello from <name>"
    /bytes/N             N deterministic bytes (`pattern_bytes`; `?seed=S`) with Content-Length
    /chunked/N           the same body, chunked (`?chunk=SIZE`, default 16384)
    /close/N             the same body, close-delimited (no length; the connection is closed)
    /stall/N?delay=S     Content-Length N; sends the first half, waits S seconds, sends the rest
    POST|PUT /upload     consumes the body (Content-Length or chunked): JSON {length, sha256}
    /echo-headers        JSON {method, target, version, headers: [[name, value], ...]}
    /status/NNN          that status (small text body unless 204/304)
    /redirect?to=URL     302 (or `&code=30x`) with Location: URL
    /slow?delay=S        waits S seconds, then 200 "slow"
    /ws                  101 Switching Protocols (given an Upgrade header), then echoes raw bytes
    /reset               closes the connection with a TCP RST instead of answering
    anything else        404

Responses carry `X-Origin: <name>`. Large bodies are generated and hashed in chunks: nothing
holds a whole body in memory; `pattern_sha256(N, seed)` gives the expected digest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import http
import itertools
import json
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.support._aio import (
    LoopThread,
    Recorder,
    abort_with_reset,
    bind_listener,
    format_hostport,
    local_of,
    peer_of,
)
from tests.support.tlsca import HarnessCA

# ---------------------------------------------------------------------------------------------
# Deterministic body pattern
# ---------------------------------------------------------------------------------------------

PATTERN_PERIOD = 65521
"""The pattern repeats every 65521 bytes (a prime: a dropped, repeated or swapped buffer-sized
block of a body, at any power-of-two size, changes its digest)."""

CHUNK = 65536
MAX_HEAD = 256 * 1024


@functools.lru_cache(maxsize=32)
def _doubled_block(seed: int) -> bytes:
    out = bytearray()
    for counter in itertools.count():
        if len(out) >= PATTERN_PERIOD:
            break
        out += hashlib.sha256(f"egressgate-pattern:{seed}:{counter}".encode()).digest()
    block = bytes(out[:PATTERN_PERIOD])
    return block + block


def iter_pattern(
    length: int, seed: int = 0, *, offset: int = 0, chunk_size: int = CHUNK
) -> Iterator[bytes]:
    """Bytes `offset` .. `offset+length` of the deterministic pattern for `seed`, in chunks."""
    if length < 0 or offset < 0:
        raise ValueError("length and offset must be >= 0")
    doubled = _doubled_block(seed)
    step = max(1, min(chunk_size, PATTERN_PERIOD))
    position, end = offset, offset + length
    while position < end:
        size = min(step, end - position)
        start = position % PATTERN_PERIOD
        yield doubled[start : start + size]
        position += size


def pattern_bytes(length: int, seed: int = 0, *, offset: int = 0) -> bytes:
    """The pattern as one bytes object (for small lengths only)."""
    return b"".join(iter_pattern(length, seed, offset=offset))


@functools.lru_cache(maxsize=256)
def pattern_sha256(length: int, seed: int = 0) -> str:
    """Hex sha256 of the first `length` pattern bytes for `seed`, computed in chunks (cached)."""
    digest = hashlib.sha256()
    for chunk in iter_pattern(length, seed, chunk_size=PATTERN_PERIOD):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass
class AcceptRecord:
    """One accepted TCP connection (recorded before TLS or any byte is read)."""

    connection_id: int
    peer: tuple[str, int]
    local: tuple[str, int]
    time: float
    tls_established: bool = False
    sni: str | None = None
    tls_error: str | None = None
    client_cert_cn: str | None = None
    requests: int = 0
    stray_bytes: int = 0  # bytes received that never made a complete request head
    closed: bool = False


@dataclass
class RequestRecord:
    """One request as received (the body is recorded by length and sha256 only)."""

    connection_id: int
    index: int  # 0 for the first request on its connection, 1 for the next, ...
    method: str
    target: str  # exactly as sent in the request line
    version: str  # "HTTP/1.1"
    headers: list[tuple[str, str]]  # in order, original case
    raw_head: bytes  # request line and header lines, up to and including the empty line
    peer: tuple[str, int]
    tls: bool
    sni: str | None
    time: float
    body_length: int = 0
    body_sha256: str = field(default_factory=lambda: sha256_hex(b""))
    body_complete: bool = True
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    upgraded_bytes: int = 0  # bytes echoed after a 101 (the /ws endpoint)

    @property
    def path(self) -> str:
        """The target's path (for an absolute-form target, the path of the URL)."""
        return _split_target(self.target)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(_split_target(self.target)[1])

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]

    def header_names(self) -> list[str]:
        """The header names in order, with their original case."""
        return [k for k, _ in self.headers]


def _split_target(target: str) -> tuple[str, str]:
    if "://" in target.split("?", 1)[0]:
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query


class _BadRequest(Exception):
    pass


def _parse_head(raw: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = raw[:-4].split(b"\r\n") if raw.endswith(b"\r\n\r\n") else raw.split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(f"bad request line {lines[0][:200]!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and headers:  # obs-fold: keep it, joined
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(f"bad header line {line[:200]!r}")
        headers.append((name, value.strip(" \t")))
    return method, target, version, headers


def _values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    lowered = name.lower()
    return [v for k, v in headers if k.lower() == lowered]


def _tokens(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [t.strip().lower() for v in _values(headers, name) for t in v.split(",") if t.strip()]


# ---------------------------------------------------------------------------------------------
# Origin
# ---------------------------------------------------------------------------------------------


class Origin:
    """A real HTTP/1.1 origin server in a background thread; see the module doc.

    `tls=ca` serves HTTPS with a certificate from that CA for the bind address and
    `cert_names` (default: "localhost"); `client_ca=` additionally requires a client
    certificate from that CA (mTLS).
    """

    def __init__(
        self,
        name: str = "origin",
        *,
        host: str = "127.0.0.1",
        tls: HarnessCA | None = None,
        cert_names: Sequence[str] = ("localhost",),
        client_ca: HarnessCA | None = None,
        keepalive_timeout: float = 60.0,
        port: int = 0,
    ) -> None:
        self.name = name
        self.host = host
        self.keepalive_timeout = keepalive_timeout
        self.accepts: Recorder[AcceptRecord] = Recorder()
        self.requests: Recorder[RequestRecord] = Recorder()
        self._ids = itertools.count(1)
        self._writers: set[asyncio.StreamWriter] = set()
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = tls.server_context(*dict.fromkeys([host, *cert_names]), client_ca=client_ca)
            self._ssl.set_alpn_protocols(["http/1.1"])
            self._ssl.sni_callback = _remember_sni
        sock = bind_listener(host, port=port)
        self.port: int = sock.getsockname()[1]
        self._loop = LoopThread(f"origin-{name}-{self.port}")
        self._server: asyncio.base_events.Server | None = None
        try:
            self._loop.run(self._start(sock))
        except BaseException:
            sock.close()
            self.close()
            raise

    # -- addresses -------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def address(self) -> str:
        """The address as "127.0.0.1:PORT" (or "[::1]:PORT")."""
        return format_hostport(self.host, self.port)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return self.host, self.port

    def authority(self, hostname: str | None = None) -> str:
        """The authority "hostname:PORT" (hostname: the bind address by default), e.g. for a
        CONNECT target or a Host header."""
        return format_hostport(hostname or self.host, self.port)

    def url(self, path: str = "/", hostname: str | None = None) -> str:
        """A URL for `path` on this origin, naming it `hostname` (e.g. a name the test DNS server
        maps to this origin's address) or, by default, its bind address."""
        return f"{self.scheme}://{self.authority(hostname)}{path}"

    # -- records ---------------------------------------------------------------------------------

    def request_records(self, path: str | None = None) -> list[RequestRecord]:
        """Requests received so far (only those whose path is `path`, if given)."""
        items = self.requests.snapshot()
        return items if path is None else [r for r in items if r.path == path]

    def accept_records(self) -> list[AcceptRecord]:
        """TCP connections accepted so far."""
        return self.accepts.snapshot()

    def wait_for_requests(
        self, count: int = 1, timeout: float = 10.0, path: str | None = None
    ) -> list[RequestRecord]:
        """Wait (bounded) until `count` requests (to `path`, if given) have been recorded."""
        self.requests.wait_until(
            lambda items: sum(1 for r in items if path is None or r.path == path) >= count,
            timeout,
            f"{count} requests to origin {self.name!r}" + (f" for {path}" if path else ""),
        )
        return self.request_records(path)

    def wait_for_accepts(self, count: int = 1, timeout: float = 10.0) -> list[AcceptRecord]:
        """Wait (bounded) until `count` TCP connections have been accepted."""
        return self.accepts.wait_until(
            lambda items: len(items) >= count, timeout, f"{count} accepts on origin {self.name!r}"
        )

    def assert_untouched(self) -> None:
        """Fail unless nothing at all (no TCP connection, no request) ever reached this origin."""
        accepts, requests = self.accept_records(), self.request_records()
        if accepts or requests:
            raise AssertionError(
                f"canary origin {self.name!r} at {self.address} was reached: "
                f"{len(accepts)} connections {accepts!r}, {len(requests)} requests {requests!r}"
            )

    def reset_records(self) -> None:
        """Forget the accepts and requests recorded so far."""
        self.accepts.clear()
        self.requests.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving, close every connection, join the thread (idempotent)."""
        self._loop.stop(self._shutdown)

    def __enter__(self) -> Origin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Origin({self.name!r}, {self.scheme}://{self.address})"

    async def _start(self, sock: object) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- connection handling ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._loop.track()
        self._writers.add(writer)
        accept = AcceptRecord(next(self._ids), peer_of(writer), local_of(writer), time.time())
        self.accepts.append(accept)
        try:
            if self._ssl is not None:
                try:
                    await writer.start_tls(self._ssl, ssl_handshake_timeout=10.0)
                except (TimeoutError, OSError, ssl.SSLError) as exc:
                    accept.tls_error = f"{type(exc).__name__}: {exc}"
                    return
                ssl_object = writer.get_extra_info("ssl_object")
                accept.tls_established = True
                accept.sni = getattr(ssl_object, "egressgate_sni", None)
                accept.client_cert_cn = _peer_cn(ssl_object)
                self.accepts.notify()
            await self._requests(reader, writer, accept)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        finally:
            accept.closed = True
            self._writers.discard(writer)
            self.accepts.notify()
            await _close(writer)

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, accept: AcceptRecord
    ) -> None:
        for index in itertools.count():
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.keepalive_timeout)
            except asyncio.IncompleteReadError as exc:
                accept.stray_bytes += len(exc.partial)
                return
            except asyncio.LimitOverrunError:
                await self._simple(writer, 431, "request head too large\n", close=True)
                return
            try:
                method, target, version, headers = _parse_head(raw)
            except _BadRequest as exc:
                accept.stray_bytes += len(raw)
                await self._simple(writer, 400, f"{exc}\n", close=True)
                return
            ssl_object = writer.get_extra_info("ssl_object")
            record = RequestRecord(
                connection_id=accept.connection_id,
                index=index,
                method=method,
                target=target,
                version=version,
                headers=headers,
                raw_head=raw,
                peer=accept.peer,
                tls=ssl_object is not None,
                sni=accept.sni,
                time=time.time(),
            )
            accept.requests += 1
            keep_open = await self._one(reader, writer, record)
            if not keep_open:
                return

    async def _read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: RequestRecord
    ) -> Literal["ok", "bad", "gone"]:
        """Consume the request body into record.body_*: "ok", "bad" (malformed framing: answer
        400) or "gone" (the client went away mid-body)."""
        headers = record.headers
        transfer = _tokens(headers, "transfer-encoding")
        lengths = {v.strip() for v in _values(headers, "content-length")}
        chunked = bool(transfer) and transfer[-1] == "chunked"
        if transfer and not chunked:
            record.error = f"unsupported transfer-encoding {transfer!r}"
            return "bad"
        if not chunked and len(lengths) > 1:
            record.error = f"conflicting content-length {sorted(lengths)!r}"
            return "bad"
        length = 0
        if not chunked and lengths:
            text = lengths.pop()
            if not text.isdigit():
                record.error = f"bad content-length {text!r}"
                return "bad"
            length = int(text)
        has_body = chunked or length > 0
        query = record.query
        expects_continue = "100-continue" in _tokens(headers, "expect")
        if has_body and expects_continue and query.get("continue", ["1"])[0] != "0":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        digest = hashlib.sha256()
        received = 0
        try:
            if chunked:
                record.chunked = True
                received = await _read_chunked(reader, digest, record.trailers)
            else:
                remaining = length
                while remaining > 0:
                    data = await reader.read(min(remaining, 256 * 1024))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    digest.update(data)
                    received += len(data)
                    remaining -= len(data)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            record.body_complete = False
            record.error = f"incomplete body: {type(exc).__name__}"
            return "gone"
        except (ValueError, asyncio.LimitOverrunError) as exc:
            record.body_complete = False
            record.error = f"malformed chunked body: {exc}"
            return "bad"
        finally:
            record.body_length = received
            record.body_sha256 = digest.hexdigest()
        return "ok"

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: RequestRecord
    ) -> bool:
        """Serve one request; True if the connection stays open for the next one."""
        outcome = await self._read_body(reader, writer, record)
        self.requests.append(record)
        if outcome == "bad":
            await self._simple(writer, 400, f"{record.error}\n", close=True)
        if outcome != "ok":
            return False
        connection = _tokens(record.headers, "connection")
        if record.version == "HTTP/1.0":
            close = "keep-alive" not in connection
        else:
            close = "close" in connection
        try:
            return await self._route(reader, writer, record, close)
        except ValueError as exc:  # a bad number in the path or query
            return await self._simple(writer, 400, f"bad parameter: {exc}\n", close=True)

    async def _route(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        close: bool,
    ) -> bool:
        path = record.path
        query = record.query
        head_only = record.method == "HEAD"
        first = path.strip("/").split("/")[0] if path != "/" else ""
        rest = path.strip("/").split("/")[1:]
        number = int(rest[0]) if len(rest) == 1 and rest[0].isdigit() else None
        seed = int(query.get("seed", ["0"])[0])

        if path == "/":
            return await self._simple(writer, 200, f"hello from {self.name}", close, head_only)
        if first == "bytes" and number is not None:
            return await self._stream(writer, number, seed, "length", close, head_only)
        if first == "chunked" and number is not None:
            mode: Literal["chunked", "close"] = "chunked"
            if record.version == "HTTP/1.0":
                mode = "close"
            chunk = int(query.get("chunk", ["16384"])[0])
            return await self._stream(writer, number, seed, mode, close, head_only, chunk)
        if first == "close" and number is not None:
            return await self._stream(writer, number, seed, "close", True, head_only)
        if first == "stall" and number is not None:
            delay = float(query.get("delay", ["1"])[0])
            return await self._stream(writer, number, seed, "length", close, head_only, stall=delay)
        if path == "/upload":
            if record.method not in ("POST", "PUT"):
                return await self._simple(writer, 405, "use POST or PUT\n", close, head_only)
            body = {"length": record.body_length, "sha256": record.body_sha256}
            return await self._json(writer, 200, body, close)
        if path == "/echo-headers":
            body = {
                "method": record.method,
                "target": record.target,
                "version": record.version,
                "headers": [[k, v] for k, v in record.headers],
            }
            return await self._json(writer, 200, body, close, head_only)
        if first == "status" and number is not None and 200 <= number <= 999:
            text = "" if number in (204, 304) else f"status {number}\n"
            return await self._simple(writer, number, text, close, head_only)
        if path == "/redirect":
            to = query.get("to", ["/"])[0]
            code = int(query.get("code", ["302"])[0])
            return await self._simple(
                writer, code, "redirecting\n", close, head_only, [("Location", to)]
            )
        if path == "/slow":
            await asyncio.sleep(min(float(query.get("delay", ["1"])[0]), 300.0))
            return await self._simple(writer, 200, "slow\n", close, head_only)
        if path == "/ws":
            await self._websocket(reader, writer, record)
            return False
        if path == "/reset":
            abort_with_reset(writer)
            return False
        return await self._simple(writer, 404, f"no route for {path}\n", close, head_only)

    # -- responses -------------------------------------------------------------------------------

    def _head(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        close: bool,
    ) -> bytes:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
        lines = [f"HTTP/1.1 {status} {phrase}", f"X-Origin: {self.name}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        text: str,
        close: bool = False,
        head_only: bool = False,
        extra: Sequence[tuple[str, str]] = (),
        content_type: str = "text/plain; charset=utf-8",
    ) -> bool:
        body = text.encode()
        headers = [*extra]
        if status not in (204, 304):
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        writer.write(self._head(status, headers, close))
        if not head_only and status not in (204, 304):
            writer.write(body)
        await writer.drain()
        return not close

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        obj: object,
        close: bool,
        head_only: bool = False,
    ) -> bool:
        text = json.dumps(obj)
        return await self._simple(
            writer, status, text, close, head_only, content_type="application/json"
        )

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        length: int,
        seed: int,
        mode: Literal["length", "chunked", "close"],
        close: bool,
        head_only: bool,
        chunk_size: int = CHUNK,
        stall: float = 0.0,
    ) -> bool:
        headers = [("Content-Type", "application/octet-stream")]
        if mode == "length":
            headers.append(("Content-Length", str(length)))
        elif mode == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        close = close or mode == "close"
        writer.write(self._head(200, headers, close))
        if head_only:
            await writer.drain()
            return not close
        sent = 0
        for chunk in iter_pattern(length, seed, chunk_size=chunk_size):
            if stall and sent < length // 2 <= sent + len(chunk):
                cut = length // 2 - sent
                writer.write(chunk[:cut])
                await writer.drain()
                await asyncio.sleep(min(stall, 300.0))
                chunk = chunk[cut:]
                sent += cut
            if mode == "chunked":
                writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        if mode == "chunked":
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return not close

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: RequestRecord
    ) -> None:
        upgrade = record.header("upgrade")
        if not upgrade:
            await self._simple(writer, 426, "an Upgrade header is required\n", True)
            return
        headers = [("Upgrade", upgrade), ("Connection", "Upgrade")]
        key = record.header("sec-websocket-key")
        if key:
            magic = key.strip() + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(magic.encode()).digest()).decode()
            headers.append(("Sec-WebSocket-Accept", accept))
        writer.write(self._head(101, headers, False))
        await writer.drain()
        for _ in range(10_000_000):  # bounded echo loop
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            record.upgraded_bytes += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _read_chunked(
    reader: asyncio.StreamReader, digest: hashlib._Hash, trailers: list[tuple[str, str]]
) -> int:
    received = 0
    for _ in range(100_000_000):  # chunks, bounded
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size line {line[:100]!r}") from None
        if size == 0:
            for _ in range(1000):  # trailer lines, bounded
                trailer = await reader.readuntil(b"\r\n")
                if trailer == b"\r\n":
                    return received
                name, _, value = trailer[:-2].decode("latin-1").partition(":")
                trailers.append((name, value.strip()))
            raise ValueError("too many trailer lines")
        remaining = size
        while remaining > 0:
            data = await reader.read(min(remaining, 256 * 1024))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            digest.update(data)
            received += len(data)
            remaining -= len(data)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
    raise ValueError("too many chunks")


def _remember_sni(ssl_object: object, server_name: str | None, _context: ssl.SSLContext) -> None:
    with contextlib.suppress(AttributeError):
        ssl_object.egressgate_sni = server_name  # type: ignore[attr-defined]


def _peer_cn(ssl_object: ssl.SSLObject | None) -> str | None:
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    if writer.transport.is_closing():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:
        writer.transport.abort()


# ---------------------------------------------------------------------------------------------
# RawOrigin
# ---------------------------------------------------------------------------------------------


@dataclass
class RawConnection:
    """One connection to a `RawOrigin`: what it received (length, sha256, first bytes)."""

    connection_id: int
    peer: tuple[str, int]
    local: tuple[str, int]
    time: float
    bytes_received: int = 0
    bytes_sent: int = 0
    head: bytes = b""  # the first 64 KiB received
    eof_received: bool = False  # the client half-closed (or closed) its side
    closed: bool = False
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything received so far."""
        return self._digest.copy().hexdigest()


class RawOrigin:
    """A TCP server for tunnel tests, recording each connection (see `RawConnection`).

    modes: "echo" echoes every byte and half-closes after the client does; "serve" sends
    `serve_bytes` pattern bytes (`seed`) at once, half-closes, then reads until the client
    closes; "sink" only reads and records.
    """

    def __init__(
        self,
        name: str = "raw",
        *,
        host: str = "127.0.0.1",
        mode: Literal["echo", "serve", "sink"] = "echo",
        serve_bytes: int = 0,
        seed: int = 0,
        port: int = 0,
    ) -> None:
        self.name = name
        self.host = host
        self.mode = mode
        self.serve_bytes = serve_bytes
        self.seed = seed
        self.connections: Recorder[RawConnection] = Recorder()
        self._ids = itertools.count(1)
        self._writers: set[asyncio.StreamWriter] = set()
        sock = bind_listener(host, port=port)
        self.port: int = sock.getsockname()[1]
        self._loop = LoopThread(f"raw-{name}-{self.port}")
        self._server: asyncio.base_events.Server | None = None
        try:
            self._loop.run(self._start(sock))
        except BaseException:
            sock.close()
            self.close()
            raise

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return self.host, self.port

    def authority(self, hostname: str | None = None) -> str:
        """The authority "hostname:PORT" (hostname: the bind address by default)."""
        return format_hostport(hostname or self.host, self.port)

    def connection_records(self) -> list[RawConnection]:
        return self.connections.snapshot()

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> list[RawConnection]:
        """Wait (bounded) until `count` connections were accepted."""
        return self.connections.wait_until(
            lambda items: len(items) >= count, timeout, f"{count} connections to {self.name!r}"
        )

    def wait_for_closed(self, count: int = 1, timeout: float = 10.0) -> list[RawConnection]:
        """Wait (bounded) until `count` connections have been closed (so their totals are final)."""
        return self.connections.wait_until(
            lambda items: sum(1 for c in items if c.closed) >= count,
            timeout,
            f"{count} closed connections to {self.name!r}",
        )

    def assert_untouched(self) -> None:
        """Fail unless no connection ever reached this server."""
        if self.connection_records():
            raise AssertionError(f"canary {self.name!r} was reached: {self.connection_records()}")

    def close(self) -> None:
        self._loop.stop(self._shutdown)

    def __enter__(self) -> RawOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RawOrigin({self.name!r}, {self.mode}, {self.address})"

    async def _start(self, sock: object) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._loop.track()
        self._writers.add(writer)
        conn = RawConnection(next(self._ids), peer_of(writer), local_of(writer), time.time())
        self.connections.append(conn)
        try:
            if self.mode == "serve":
                for chunk in iter_pattern(self.serve_bytes, self.seed):
                    writer.write(chunk)
                    conn.bytes_sent += len(chunk)
                    await writer.drain()
                writer.write_eof()
            for _ in range(100_000_000):  # bounded read loop
                data = await reader.read(CHUNK)
                if not data:
                    conn.eof_received = True
                    break
                if len(conn.head) < CHUNK:
                    conn.head += data[: CHUNK - len(conn.head)]
                conn._digest.update(data)
                conn.bytes_received += len(data)
                if self.mode == "echo":
                    writer.write(data)
                    conn.bytes_sent += len(data)
                    await writer.drain()
                self.connections.notify()
            if self.mode == "echo" and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True
            self._writers.discard(writer)
            self.connections.notify()
            await _close(writer)


class OriginFactory(Protocol):
    """Type of the `origin_factory` fixture."""

    def __call__(self, name: str = "origin", **kwargs: Any) -> Origin: ...


class RawOriginFactory(Protocol):
    """Type of the `raw_origin_factory` fixture."""

    def __call__(self, name: str = "raw", **kwargs: Any) -> RawOrigin: ...
