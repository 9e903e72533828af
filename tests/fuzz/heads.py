"""Request heads for fuzzing: valid seeds and the mutations that break them in telling ways.

One generator serves both the property tests (hypothesis hands it a `random.Random` it
controls, through `st.randoms()`, so it shrinks and replays) and the live-proxy fuzz (a seeded
`random.Random`, so a failing case is reproducible from its seed and index).

The mutations aim at what a request-head reader gets wrong: byte flips, inserted NUL / bare CR /
bare LF / obs-text, header duplication, Content-Length and Transfer-Encoding combinations,
obs-fold, overlong lines, huge numbers, odd methods, versions and targets, truncation.
"""

from __future__ import annotations

import random
from collections.abc import Callable

AUTHORITY = b"fuzz.test:{port}"  # the live fuzz formats the origin's port in

# Valid heads, as clients send them; "{port}" is replaced by the live fuzz (kept literally in
# the property tests, where it is just a port the target parser refuses).
SEEDS: tuple[bytes, ...] = (
    b"GET http://fuzz.test:{port}/a?b=c HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"GET http://fuzz.test:{port}/ HTTP/1.0\r\n\r\n",
    b"HEAD http://fuzz.test:{port}/h HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Connection: close\r\n\r\n",
    b"POST http://fuzz.test:{port}/p HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"POST http://fuzz.test:{port}/c HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT http://fuzz.test:{port}/e HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET http://fuzz.test:{port}/ws HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT fuzz.test:{port} HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Proxy-Connection: Keep-Alive\r\n\r\n",
    b"CONNECT fuzz.test:{port} HTTP/1.0\r\n\r\n",
    b"GET http://fuzz.test:{port}/1 HTTP/1.1\r\nHost: fuzz.test:{port}\r\n\r\n"
    b"GET http://fuzz.test:{port}/2 HTTP/1.1\r\nHost: fuzz.test:{port}\r\n"
    b"Connection: close\r\n\r\n",
)

SPECIAL_BYTES = b'\x00\r\n\t :;,\x0b\x0c\x7f\x80\xff"\\/?#@[]%'
FRAMING_LINES: tuple[bytes, ...] = (
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    b"Transfer-Encoding: chunked\r\nContent-Length: 0",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Content-Length: 5, 5",
    b"Content-Length: -1",
    b"Content-Length: +5",
    b"Content-Length: 0x10",
    b"Content-Length: 99999999999999999999999999",
    b"Content-Length: 1 2",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding: identity, chunked",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\x0bchunked",
    b'Transfer-Encoding: "chunked"',
    b"Content-Length:\r\n 5",
    b"Expect: 100-continue",
    b"Connection: close, Upgrade, te, x-secret",
    b"Upgrade: h2c",
)
TARGETS: tuple[bytes, ...] = (
    b"http://fuzz.test:{port}/",
    b"http://FUZZ.test.:{port}/",
    b"http://user:pw@fuzz.test:{port}/",
    b"http://fuzz.test:99999999999999999999/",
    b"http://fuzz.test:0/",
    b"http://fuzz.test:-1/",
    b"http://[::1/",
    b"http://[::ffff:127.0.0.1]:{port}/",
    b"http://::1:80/",
    b"http://0x7f.1:{port}/",
    b"http://2130706433:{port}/",
    b"http://xn--nxasmq6b.test:{port}/",
    b"http://a..b:{port}/",
    b"http://" + b"a" * 300 + b".test/",
    b"https://fuzz.test:{port}/",
    b"ftp://fuzz.test/",
    b"http:/fuzz.test/",
    b"http://",
    b"*",
    b"/",
    b"fuzz.test:{port}",
    b"fuzz.test",
    b"[::1]:{port}",
    b"fuzz.test:{port}/path",
)
METHODS: tuple[bytes, ...] = (
    b"GET", b"get", b"POST", b"CONNECT", b"connect", b"OPTIONS", b"TRACE", b"PRI", b"DELETE",
    b"G\x00T", b"GE T", b"", b"X" * 40, b"\xff\xfe",
)  # fmt: skip
VERSIONS: tuple[bytes, ...] = (
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1",
    b"HTTP/1.1x", b"HTTP/", b"", b"HTTP/1.1 extra",
)  # fmt: skip


def _pos(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data) + 1)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def _header_index(rng: random.Random, lines: list[bytes]) -> int:
    """A line inside the head (after the request line, before the blank line), or 1."""
    try:
        end = lines.index(b"")
    except ValueError:
        end = len(lines)
    return rng.randrange(1, end) if end > 1 else 1


def flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def insert_special(rng: random.Random, data: bytes) -> bytes:
    i = _pos(rng, data)
    piece = bytes(rng.choice(SPECIAL_BYTES) for _ in range(rng.randint(1, 3)))
    return data[:i] + piece + data[i:]


def delete(rng: random.Random, data: bytes) -> bytes:
    i = _pos(rng, data)
    return data[:i] + data[i + rng.randint(1, 8) :]


def duplicate_header(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _header_index(rng, lines)
    lines.insert(i, lines[i] if i < len(lines) else b"X: y")
    return b"\r\n".join(lines)


def many_headers(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    count = rng.choice([50, 200, 2000])
    lines[1:1] = [b"X-Many-%d: v" % n for n in range(count)]
    return b"\r\n".join(lines)


def framing(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    lines.insert(_header_index(rng, lines), rng.choice(FRAMING_LINES))
    return b"\r\n".join(lines)


def overlong(rng: random.Random, data: bytes) -> bytes:
    size = rng.choice([1000, 8200, 40_000, 70_000])
    lines = _lines(data)
    if rng.random() < 0.5:  # the request target
        first = lines[0].split(b" ")
        if len(first) >= 2:
            first[1] = first[1] + b"x" * size
        lines[0] = b" ".join(first)
    else:  # a header value
        lines.insert(_header_index(rng, lines), b"X-Long: " + b"v" * size)
    return b"\r\n".join(lines)


def bare_line_ends(rng: random.Random, data: bytes) -> bytes:
    ending = rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])
    if rng.random() < 0.5:
        return data.replace(b"\r\n", ending)
    lines = _lines(data)
    i = rng.randrange(len(lines))
    return b"\r\n".join(lines[:i]) + ending + b"\r\n".join(lines[i:])


def obs_fold(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _header_index(rng, lines)
    lines.insert(i + 1 if i < len(lines) else i, rng.choice([b" folded", b"\tfolded", b" "]))
    return b"\r\n".join(lines)


def huge_number(rng: random.Random, data: bytes) -> bytes:
    number = rng.choice([b"4294967296", b"18446744073709551616", b"9" * 40, b"-0", b"1e9"])
    for old in (b"Content-Length: 5", b"Content-Length: 3", b"\r\n5\r\n", b":{port}"):
        if old in data:
            new = old.replace(b"5", number).replace(b"3", number).replace(b"{port}", number)
            return data.replace(old, new, 1)
    return framing(rng, data)


def swap_method(rng: random.Random, data: bytes) -> bytes:
    method, _, rest = data.partition(b" ")
    return rng.choice(METHODS) + b" " + rest if rest else method


def swap_version(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    first = lines[0].rsplit(b" ", 1)
    lines[0] = first[0] + b" " + rng.choice(VERSIONS) if len(first) == 2 else lines[0]
    return b"\r\n".join(lines)


def swap_target(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    parts = lines[0].split(b" ")
    if len(parts) >= 3:
        parts[1] = rng.choice(TARGETS)
    lines[0] = b" ".join(parts)
    return b"\r\n".join(lines)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))] if len(data) > 1 else data


def garbage(rng: random.Random, data: bytes) -> bytes:
    del data
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


Mutation = Callable[[random.Random, bytes], bytes]
MUTATIONS: tuple[Mutation, ...] = (
    flip, insert_special, delete, duplicate_header, many_headers, framing, overlong,
    bare_line_ends, obs_fold, huge_number, swap_method, swap_version, swap_target, truncate,
    garbage,
)  # fmt: skip


def mutated_head(rng: random.Random, port: int | None = None) -> tuple[bytes, tuple[str, ...]]:
    """A seed head with 0-3 mutations (a few stay valid on purpose); and the names of the
    mutations applied, so that a failure says what was done."""
    data = rng.choice(SEEDS)
    applied: list[str] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        data = mutation(rng, data)
        applied.append(mutation.__name__)
    if port is not None:
        data = data.replace(b"{port}", str(port).encode())
    return data or b"\r\n", tuple(applied)
