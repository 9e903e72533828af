"""Helpers around REAL clients, for driving the proxy (or an origin) from tests.

- `curl(args, proxy=..., cacert=...)`: the curl binary; status, every header block (CONNECT
  response, 100 Continue, redirects, final), body (streamed to a temp file and hashed), stderr.
- `openssl_s_client_via_connect(...)`: `openssl s_client -proxy` (a CONNECT tunnel + TLS).
- `raw_request(address, data)`: raw bytes over a socket, read until close/idle timeout (for
  malformed requests and pipelining); `parse_responses()` splits what came back.
- `open_connect_tunnel(...)` / `tls_via_connect(...)`: CONNECT by hand, then Python `ssl`.
- `read_response(sock)`: read one HTTP/1.1 response from a socket, hashing the body in chunks.
- `stream_get(url, proxy=...)`: httpx streaming; length and sha256 of a body of any size.
- `requests_session(...)`: a requests Session that ignores *_proxy environment variables.

Every helper is bounded in time. Clients started as subprocesses get an environment without any
*_proxy variable (unless `env=` is given) and ignore curl's ~/.curlrc (`-q`).
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests

from tests.support._aio import format_hostport
from tests.support.proxy import clean_env
from tests.support.tlsca import IssuedCert

Address = tuple[str, int]
MAX_IN_MEMORY = 16 * 1024 * 1024


class ClientError(AssertionError):
    """A client helper could not do what it was asked (timeout, malformed response, ...)."""


class ConnectFailed(ClientError):
    """A CONNECT was answered with something other than 2xx."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"CONNECT answered {status}: {head[:2000]!r}")
        self.status = status
        self.head = head


def _proxy_hostport(proxy: Address | str) -> str:
    if isinstance(proxy, tuple):
        return format_hostport(*proxy)
    return proxy.removeprefix("http://").rstrip("/")


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers if k.lower() == lowered), None)


def _hash_file(path: Path, keep: int) -> tuple[int, str, bytes]:
    digest = hashlib.sha256()
    length = 0
    kept = bytearray()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            length += len(chunk)
            if len(kept) < keep:
                kept += chunk[: keep - len(kept)]
    return length, digest.hexdigest(), bytes(kept)


# ---------------------------------------------------------------------------------------------
# Response heads
# ---------------------------------------------------------------------------------------------


@dataclass
class ResponseHead:
    """A status line and its headers (in order, original case)."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """First value of `name` (case-insensitive) or None."""
        return _header(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse 'HTTP/1.1 200 OK\\r\\nName: value\\r\\n...' (the final empty line is optional)."""
    lines = raw.decode("latin-1").replace("\r\n", "\n").rstrip("\n").split("\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ClientError(f"not an HTTP status line: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return ResponseHead(version, int(code), reason, headers)


# ---------------------------------------------------------------------------------------------
# curl
# ---------------------------------------------------------------------------------------------


@dataclass
class CurlResult:
    """What curl did. `status` is the final response code (0: none); `connect_status` the code
    of the proxy's CONNECT response (0: no CONNECT); `responses` every header block in order."""

    argv: list[str]
    exit_code: int
    status: int
    connect_status: int
    responses: list[ResponseHead]
    body: bytes  # the whole body if body_length <= max_body, else its first max_body bytes
    body_length: int
    body_sha256: str
    stderr: str
    info: dict[str, Any] = field(default_factory=dict)  # curl's -w '%{json}'

    @property
    def final(self) -> ResponseHead | None:
        """The last header block (the final response), if any."""
        return self.responses[-1] if self.responses else None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Headers of the final response."""
        return self.final.headers if self.final else []

    def header(self, name: str) -> str | None:
        """First value of `name` in the final response."""
        return _header(self.headers, name)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _split_header_blocks(raw: bytes) -> list[ResponseHead]:
    blocks = raw.replace(b"\r\n", b"\n").split(b"\n\n")
    return [parse_response_head(block) for block in blocks if block.strip()]


def curl(
    args: Sequence[str],
    *,
    timeout: float = 30.0,
    proxy: str | Address | None = None,
    cacert: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    max_body: int = MAX_IN_MEMORY,
    input: bytes | None = None,
) -> CurlResult:
    """Run `curl -q -sS --noproxy '' -D <tmp> -o <tmp> -w '%{json}' --max-time T [-x proxy]
    [--cacert F] ARGS`. Don't pass -o/-D/-w/-s in `args`. Without `env`, curl's environment is
    the test process's minus every *_proxy variable. `input` is fed to curl's stdin (for
    `--data-binary @-` / `-T -`)."""
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        head_path = Path(tmp) / "headers"
        body_path = Path(tmp) / "body"
        argv = ["curl", "-q", "-sS", "--noproxy", "", "-D", str(head_path), "-o", str(body_path)]
        argv += ["-w", "%{json}", "--max-time", f"{timeout:g}"]
        if proxy is not None:
            argv += ["-x", proxy if isinstance(proxy, str) else "http://" + format_hostport(*proxy)]
        if cacert is not None:
            argv += ["--cacert", str(cacert)]
        argv += list(args)
        try:
            done = subprocess.run(
                argv,
                input=input if input is not None else b"",
                capture_output=True,
                env=dict(env) if env is not None else clean_env(),
                timeout=timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClientError(f"curl did not finish within {timeout + 10}s: {argv}") from exc
        info: dict[str, Any] = {}
        if done.stdout.strip():
            try:
                info = json.loads(done.stdout)
            except ValueError:
                info = {"raw_stdout": done.stdout.decode("utf-8", "replace")}
        responses = _split_header_blocks(head_path.read_bytes()) if head_path.exists() else []
        length, digest, kept = 0, hashlib.sha256().hexdigest(), b""
        if body_path.exists():
            length, digest, kept = _hash_file(body_path, max_body)
        return CurlResult(
            argv=argv,
            exit_code=done.returncode,
            status=int(info.get("response_code") or info.get("http_code") or 0),
            connect_status=int(info.get("http_connect") or 0),
            responses=responses,
            body=kept,
            body_length=length,
            body_sha256=digest,
            stderr=done.stderr.decode("utf-8", "replace"),
            info=info,
        )


# ---------------------------------------------------------------------------------------------
# openssl s_client
# ---------------------------------------------------------------------------------------------


@dataclass
class SClientResult:
    """What `openssl s_client -brief` reported. `stdout` is the application data received."""

    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: str

    @property
    def handshake_ok(self) -> bool:
        return "CONNECTION ESTABLISHED" in self.stderr

    @property
    def verified(self) -> bool:
        """The server certificate chain (and name, if one was checked) verified."""
        return self.handshake_ok and "Verification: OK" in self.stderr

    def summary(self, key: str) -> str | None:
        """A value from the -brief summary, e.g. summary("Protocol version") → "TLSv1.3"."""
        for line in self.stderr.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
        return None


def openssl_s_client_via_connect(
    proxy: Address | str,
    host: str,
    port: int,
    cafile: Path | str | None,
    servername: str | None = None,
    *,
    send: bytes | None = None,
    client_cert: IssuedCert | None = None,
    timeout: float = 15.0,
    extra_args: Sequence[str] = (),
) -> SClientResult:
    """`openssl s_client -brief -proxy PROXY -connect host:port`, verifying against `cafile`
    (and the certificate's name against `servername`, or `host`). `servername` is the SNI sent
    (default: `host`; "" sends none). With `send`, those bytes are written once the handshake is
    done and output is read until the server closes (ask for `Connection: close`); without, the
    tool disconnects right after the handshake."""
    argv = ["openssl", "s_client", "-brief", "-proxy", _proxy_hostport(proxy)]
    argv += ["-connect", format_hostport(host, port), "-verify_return_error"]
    if cafile is not None:
        argv += ["-CAfile", str(cafile)]
    name = host if servername is None else servername
    if servername == "":
        argv += ["-noservername"]
    else:
        argv += ["-servername", name]
    if name:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
            argv += ["-verify_ip", name]
        except OSError:
            argv += ["-verify_hostname", name]
    if client_cert is not None:
        argv += ["-cert", str(client_cert.cert_path), "-key", str(client_cert.key_path)]
    if send is not None:
        argv += ["-ign_eof"]
    argv += list(extra_args)
    try:
        done = subprocess.run(
            argv,
            input=send or b"",
            capture_output=True,
            env=clean_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"openssl s_client did not finish within {timeout}s: {argv}") from exc
    return SClientResult(argv, done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------------
# Raw sockets
# ---------------------------------------------------------------------------------------------


@dataclass
class RawResult:
    """Bytes read back after `raw_request`, and how the read ended."""

    data: bytes
    closed: bool  # the peer closed (EOF)
    reset: bool  # the peer reset the connection
    timed_out: bool  # nothing arrived for read_timeout seconds (or total_timeout passed)

    def responses(self, bodyless: Container[int] = ()) -> list[ParsedResponse]:
        """`parse_responses(self.data, bodyless)`."""
        return parse_responses(self.data, bodyless)[0]


def raw_request(
    address: Address,
    data: bytes | Sequence[bytes],
    *,
    read_timeout: float = 5.0,
    total_timeout: float = 30.0,
    half_close: bool = False,
    max_bytes: int = 64 * 1024 * 1024,
) -> RawResult:
    """Connect to `address`, send `data` (several pieces: one `sendall` each), optionally
    half-close, and read until the peer closes, `read_timeout` passes with nothing new, or
    `total_timeout` / `max_bytes` is reached."""
    pieces = [data] if isinstance(data, bytes | bytearray) else list(data)
    deadline = time.monotonic() + total_timeout
    with socket.create_connection(address, timeout=min(read_timeout, total_timeout)) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return RawResult(b"", False, True, False)
        return read_to_end(sock, read_timeout=read_timeout, deadline=deadline, max_bytes=max_bytes)


def read_to_end(
    sock: socket.socket,
    *,
    read_timeout: float,
    deadline: float,
    max_bytes: int = 64 * 1024 * 1024,
) -> RawResult:
    """Read from `sock` until the peer closes or resets, `read_timeout` passes with nothing new,
    the monotonic `deadline` is reached, or `max_bytes` have arrived (every bound is checked)."""
    received = bytearray()
    closed = reset = timed_out = False
    while len(received) < max_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        sock.settimeout(min(read_timeout, remaining))
        try:
            chunk = sock.recv(256 * 1024)
        except TimeoutError:
            timed_out = True
            break
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
    return RawResult(bytes(received), closed, reset, timed_out)


@dataclass
class ParsedResponse:
    """One response split out of a byte stream by `parse_responses`."""

    head: ResponseHead
    body: bytes
    raw: bytes

    @property
    def status(self) -> int:
        return self.head.status

    def header(self, name: str) -> str | None:
        return self.head.header(name)


def parse_responses(
    data: bytes, bodyless: Container[int] = ()
) -> tuple[list[ParsedResponse], bytes]:
    """Split a stream of HTTP/1.1 responses (pipelining, keep-alive) into responses, and the
    unparsed rest. 1xx responses are listed too. `bodyless`: indexes (counting final responses
    only, from 0) of responses to HEAD requests. A response without length runs to the end."""
    responses: list[ParsedResponse] = []
    position = 0
    finals = 0
    for _ in range(100_000):  # responses, bounded
        end = data.find(b"\r\n\r\n", position)
        if end < 0:
            break
        head = parse_response_head(data[position : end + 4])
        body_start = end + 4
        informational = 100 <= head.status < 200
        no_body = informational or head.status in (204, 304) or finals in bodyless
        if no_body:
            body_end = body_start
            body = b""
        elif "chunked" in (head.header("transfer-encoding") or "").lower():
            parsed = _dechunk(data, body_start)
            if parsed is None:
                break
            body, body_end = parsed
        elif head.header("content-length") is not None:
            body_end = body_start + int(head.header("content-length") or "0")
            if body_end > len(data):
                break
            body = data[body_start:body_end]
        else:
            body_end = len(data)
            body = data[body_start:]
        responses.append(ParsedResponse(head, body, data[position:body_end]))
        position = body_end
        if not informational:
            finals += 1
    return responses, data[position:]


def _dechunk(data: bytes, position: int) -> tuple[bytes, int] | None:
    body = bytearray()
    for _ in range(10_000_000):  # chunks, bounded
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(data[position:line_end].split(b";")[0].strip() or b"0", 16)
        position = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", position)
            while trailer_end > position:  # skip trailer lines
                position = trailer_end + 2
                trailer_end = data.find(b"\r\n", position)
            return (bytes(body), trailer_end + 2) if trailer_end >= 0 else None
        if position + size + 2 > len(data):
            return None
        body += data[position : position + size]
        position += size + 2
    return None


# ---------------------------------------------------------------------------------------------
# Streaming reads
# ---------------------------------------------------------------------------------------------


@dataclass
class StreamedResponse:
    """A response whose body was hashed in chunks, never held in memory whole."""

    head: ResponseHead
    body_length: int
    body_sha256: str
    body_prefix: bytes  # the first `keep` bytes of the body

    @property
    def status(self) -> int:
        return self.head.status

    def header(self, name: str) -> str | None:
        return self.head.header(name)


def hash_chunks(chunks: Iterable[bytes], keep: int = 4096) -> tuple[int, str, bytes]:
    """(total length, hex sha256, first `keep` bytes) of an iterable of chunks."""
    digest = hashlib.sha256()
    length = 0
    prefix = bytearray()
    for chunk in chunks:
        digest.update(chunk)
        length += len(chunk)
        if len(prefix) < keep:
            prefix += chunk[: keep - len(prefix)]
    return length, digest.hexdigest(), bytes(prefix)


def _read_line(stream: Any, limit: int = 65536) -> bytes:
    line: bytes = stream.readline(limit + 1)
    if len(line) > limit:
        raise ClientError("line too long in response")
    return line


def read_response(
    sock: socket.socket, *, head_request: bool = False, keep: int = 4096
) -> StreamedResponse:
    """Read one HTTP/1.x response from `sock` (skipping 1xx), hashing the body in chunks:
    Content-Length, chunked, or close-delimited. The socket's own timeout applies per read."""
    stream = sock.makefile("rb", buffering=256 * 1024)
    try:
        for _ in range(100):  # 1xx responses, bounded
            head_lines = bytearray()
            for _ in range(1000):  # header lines, bounded
                line = _read_line(stream)
                if not line:
                    raise ClientError(f"connection closed in the response head: {head_lines!r}")
                head_lines += line
                if line in (b"\r\n", b"\n"):
                    break
            head = parse_response_head(bytes(head_lines))
            if not 100 <= head.status < 200 or head.status == 101:
                break
        else:
            raise ClientError("too many 1xx responses")
        if head_request or head.status in (101, 204, 304):
            return StreamedResponse(head, 0, hashlib.sha256().hexdigest(), b"")
        if "chunked" in (head.header("transfer-encoding") or "").lower():
            chunks = _iter_chunked(stream)
        elif head.header("content-length") is not None:
            chunks = _iter_length(stream, int(head.header("content-length") or "0"))
        else:
            chunks = _iter_until_close(stream)
        length, digest, prefix = hash_chunks(chunks, keep)
        return StreamedResponse(head, length, digest, prefix)
    finally:
        stream.close()


def _iter_length(stream: Any, length: int) -> Iterable[bytes]:
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(remaining, 256 * 1024))
        if not chunk:
            raise ClientError(f"connection closed with {remaining} of {length} body bytes unread")
        remaining -= len(chunk)
        yield chunk


def _iter_until_close(stream: Any) -> Iterable[bytes]:
    for _ in range(1 << 40):  # bounded by the peer closing (or the socket timeout)
        chunk = stream.read1(256 * 1024)
        if not chunk:
            return
        yield chunk


def _iter_chunked(stream: Any) -> Iterable[bytes]:
    for _ in range(1 << 40):
        line = _read_line(stream)
        if not line:
            raise ClientError("connection closed in a chunk size line")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            for _ in range(1000):
                if _read_line(stream) in (b"\r\n", b"\n", b""):
                    return
            raise ClientError("too many trailer lines")
        yield from _iter_length(stream, size)
        if _read_line(stream) not in (b"\r\n", b"\n"):
            raise ClientError("chunk not followed by CRLF")


def stream_get(
    url: str,
    *,
    proxy: str | None = None,
    cafile: Path | str | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    keep: int = 4096,
) -> StreamedResponse:
    """Fetch `url` with httpx (through `proxy` if given; HTTPS via CONNECT), streaming the raw
    body (no content decoding) into a sha256."""
    verify: ssl.SSLContext | bool = True
    if cafile is not None:
        verify = ssl.create_default_context(cafile=str(cafile))
    with (
        httpx.Client(proxy=proxy, verify=verify, trust_env=False, timeout=timeout) as client,
        client.stream(method, url, headers=dict(headers or {})) as response,
    ):
        length, digest, prefix = hash_chunks(response.iter_raw(256 * 1024), keep)
        head = ResponseHead(
            response.http_version,
            response.status_code,
            response.reason_phrase,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw],
        )
        return StreamedResponse(head, length, digest, prefix)


def requests_session(
    proxy_url: str | None = None, cafile: Path | str | None = None
) -> requests.Session:
    """A requests Session that ignores *_proxy/REQUESTS_CA_BUNDLE variables, optionally sending
    everything through `proxy_url` and trusting only `cafile`. Close it (use `with`)."""
    session = requests.Session()
    session.trust_env = False
    if proxy_url is not None:
        session.proxies = {"http": proxy_url, "https": proxy_url}
    if cafile is not None:
        session.verify = str(cafile)
    return session


# ---------------------------------------------------------------------------------------------
# CONNECT by hand
# ---------------------------------------------------------------------------------------------


@dataclass
class ConnectTunnel:
    """A socket on which CONNECT was sent, and the proxy's answer."""

    sock: socket.socket
    head: ResponseHead
    raw_head: bytes
    leftover: bytes  # bytes read after the response head (should be b"" for a 200)

    @property
    def status(self) -> int:
        return self.head.status

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ConnectTunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_connect_tunnel(
    proxy: Address,
    authority: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
    send_after_s: float = 0.0,
) -> ConnectTunnel:
    """Send `CONNECT authority HTTP/1.1` (plus a Host header and `headers`) to `proxy`, read
    the response head (bounded), and return the still-open socket with the parsed answer.
    `send_after_s`: wait that long between connecting and sending (a client that is slow to
    speak)."""
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        time.sleep(send_after_s)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{k}: {v}" for k, v in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buffer = bytearray()
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > 65536 or time.monotonic() > deadline:
                raise ClientError(f"no CONNECT response head from {proxy}: {bytes(buffer)!r}")
            chunk = sock.recv(65536)
            if not chunk:
                raise ClientError(f"proxy closed during CONNECT: {bytes(buffer)!r}")
            buffer += chunk
        end = buffer.index(b"\r\n\r\n") + 4
        raw_head = bytes(buffer[:end])
        return ConnectTunnel(sock, parse_response_head(raw_head), raw_head, bytes(buffer[end:]))
    except BaseException:
        sock.close()
        raise


def tls_via_connect(
    proxy: Address,
    host: str,
    port: int,
    *,
    context: ssl.SSLContext,
    server_hostname: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> ssl.SSLSocket:
    """CONNECT host:port through `proxy`, then a TLS handshake with `context` (SNI and name
    check: `server_hostname`, default `host`). Raises ConnectFailed on a non-2xx answer.
    The caller closes the returned socket (use `with`)."""
    tunnel = open_connect_tunnel(
        proxy, format_hostport(host, port), headers=headers, timeout=timeout
    )
    if not 200 <= tunnel.status < 300:
        tunnel.close()
        raise ConnectFailed(tunnel.status, tunnel.raw_head + tunnel.leftover)
    if tunnel.leftover:
        tunnel.close()
        raise ClientError(f"bytes after the CONNECT response: {tunnel.leftover[:200]!r}")
    try:
        return context.wrap_socket(tunnel.sock, server_hostname=server_hostname or host)
    except BaseException:
        tunnel.close()
        raise


def https_request_via_connect(
    proxy: Address,
    host: str,
    port: int,
    path: str = "/",
    *,
    context: ssl.SSLContext,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 30.0,
) -> StreamedResponse:
    """One HTTPS request through a CONNECT tunnel with Python's ssl (Connection: close); the
    response body is hashed in chunks."""
    with tls_via_connect(proxy, host, port, context=context, timeout=timeout) as tls:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {format_hostport(host, port)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return read_response(tls, head_request=method == "HEAD")
