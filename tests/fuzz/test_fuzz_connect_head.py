"""Fuzz the CONNECT fast path (http1/connect_head.py) against the full parser, adversarially.

tests/unit/http1/test_connect_head.py checks generated heads at the default limits. Here the
heads are mutated real CONNECT heads and near misses of the fast path's regular expression
(case of framing header names, control bytes and obs-text in values, duplicated Host, a CONNECT
line followed by a second request), and the limits are drawn close to the head's own size, where
an off-by-one in either reader's counting would show. The property is the fast path's contract:
it returns None, or exactly what the full parser returns (same head, same bytes after it), and
never accepts what the full parser refuses.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.http1.connect_head import read_connect_head
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.headpath import check_connect_fast_path, full_parser
from tests.fuzz.heads import MUTATIONS

CONNECT_SEEDS = (
    b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n"
    b"User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.0\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
)
NEAR_MISS_LINES = (
    b"content-LENGTH: 0", b"Content-Length:0", b"Transfer-Encoding: chunked", b"CONNECTION: close",
    b"Connection:keep-alive", b"Host: a.test:443", b"X: \x7f", b"X: caf\xc3\xa9", b"X: a\x00b",
    b"X:\t\tv\t", b"X: v ", b"X :v", b" X: v", b"X", b":v", b"X: a\rb", b"X-\xff: v",
    b"Content-Length : 5", b"Transfer-Encoding:\tchunked",
)  # fmt: skip
AFTER_HEAD = (b"", b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", b"\r\n", b"\x00")


@st.composite
def adversarial_connects(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    data = rng.choice(CONNECT_SEEDS)
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(NEAR_MISS_LINES))
    data = b"\r\n".join(lines) + b"\r\n\r\n" + rng.choice(AFTER_HEAD)
    for _ in range(draw(st.integers(0, 2))):
        data = rng.choice(MUTATIONS)(rng, data)
    return data


def _limits(data: bytes) -> st.SearchStrategy[tuple[int, int]]:
    size = len(data)
    near = st.integers(max(1, size - 80), size + 8)
    return st.tuples(st.one_of(st.just(8192), near), st.one_of(st.just(65536), near))


@fuzz_settings(fast=400, deep=30_000)
@given(st.data())
def test_fast_path_is_the_full_parser_or_declines(data: st.DataObject) -> None:
    head = data.draw(adversarial_connects(), label="head")
    max_line, max_head = data.draw(_limits(head), label="limits")
    check_connect_fast_path(head, max_line, max_head)


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
@pytest.mark.parametrize(
    "value",
    [b"Keep-Alive", b"keep-alive", b"close", b"Close", b" keep-alive ", b"Keep-Alive\t",
     b"keep-alive, close", b"close, keep-alive", b"upgrade", b"keep-alive;x", b"foo", b""],
)  # fmt: skip
def test_proxy_connection_gives_the_full_parsers_keep_alive(version: bytes, value: bytes) -> None:
    """Found by this fuzz, 2026-12-04: an HTTP/1.0 CONNECT with "Proxy-Connection: Keep-Alive"
    (and an HTTP/1.1 one with "close") got the opposite keep_alive from llhttp's."""
    head = b"CONNECT a.test:443 HTTP/" + version + b"\r\nProxy-Connection:" + value + b"\r\n\r\n"
    fast = read_connect_head(head, 8192, 65536)
    assert fast is None or fast == full_parser(head, 8192, 65536)
    if value.strip(b" \t").lower() in (b"keep-alive", b"close"):
        assert fast is not None  # curl's CONNECT (Proxy-Connection: Keep-Alive) stays fast


def test_near_misses_are_exercised() -> None:
    """The generator reaches both outcomes: fast-path hits and declines (else it tests nothing)."""
    rng = random.Random(3)
    hits = declines = 0
    for _ in range(300):
        data = rng.choice(CONNECT_SEEDS)
        if rng.random() < 0.5:
            data = data.replace(b"\r\n\r\n", b"\r\n" + rng.choice(NEAR_MISS_LINES) + b"\r\n\r\n")
        if read_connect_head(data, 8192, 65536) is None:
            declines += 1
        else:
            hits += 1
    assert hits > 50
    assert declines > 50
