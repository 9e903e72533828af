"""Fuzz the request-head path as the forward and CONNECT paths run it, without sockets.

bytes → http1/parser.py (RequestParser) → http1/semantics.py (target form, framing, Connection
tokens, hop-by-hop removal) → names/hostname.py (normalize_host) → http1/render.py (the head
sent upstream). Properties, on random and mutated heads (tests/fuzz/heads.py):

1. Only the documented errors: ProtocolError from the parser and semantics, InvalidHost from
   normalization. Anything else is a crash the proxy would turn into a dropped client.
2. Every head the parser emits respects the limits (target ≤ max_request_line_bytes, head ≤
   max_header_bytes).
3. The head we render upstream re-parses to exactly one request with the same method, the
   origin-form target, one Host (the authority), the same body framing, and no header that was
   not asked for: a client cannot smuggle a second request or a different framing through us.
4. However the bytes are split into reads, the parser gives the same heads, or an error.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import ProtocolError
from egressgate.http1.events import RequestHead
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.headpath import check_bytes, parse_all
from tests.fuzz.heads import FRAMING_LINES, METHODS, SPECIAL_BYTES, TARGETS, mutated_head


def mutated() -> st.SearchStrategy[bytes]:
    return st.randoms(use_true_random=False).map(lambda rng: mutated_head(rng)[0])


_TOKEN = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect",
     b"Proxy-Connection", b"Via", b"X-A", b"te", b"Keep-Alive", b"Trailer"]
)  # fmt: skip
_VALUE = st.one_of(
    st.sampled_from([b"chunked", b"close", b"keep-alive", b"5", b"0", b"-1", b"100-continue",
                     b"Upgrade, x-a", b"websocket", b" chunked ", b"h2c", b""]),
    st.lists(st.sampled_from(list(SPECIAL_BYTES) + list(b"az09")), max_size=12).map(bytes),
)  # fmt: skip
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "])


@st.composite
def grammar_heads(draw: st.DrawFn) -> bytes:
    """Request lines and header blocks built from parts, most of them plausible."""
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS)).replace(b"{port}", b"8080")
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2"]))
    out = [method + b" " + target + b" " + version + draw(_EOL)]
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(FRAMING_LINES)) + b"\r\n")
            continue
        separator = draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
        out.append(draw(_TOKEN) + separator + draw(_VALUE) + draw(_EOL))
    out.append(draw(_EOL))
    out.append(draw(st.binary(max_size=24)))
    return b"".join(out)


HEADS = st.one_of(mutated(), grammar_heads(), st.binary(max_size=200))


@fuzz_settings(fast=300, deep=20_000)
@given(HEADS)
def test_the_head_path_raises_only_its_own_errors(data: bytes) -> None:
    check_bytes(data)


@fuzz_settings(fast=200, deep=10_000)
@given(HEADS, st.lists(st.integers(0, 300), max_size=6))
def test_the_parser_gives_the_same_heads_however_the_bytes_are_split(
    data: bytes, cuts: list[int]
) -> None:
    pieces = [c for c in cuts if 0 < c < len(data)]
    whole, whole_error = outcome(data, None)
    split, split_error = outcome(data, pieces)
    assert (whole_error is None) == (split_error is None), (
        f"whole: {whole_error}; split at {pieces}: {split_error}"
    )
    heads = [e for e in whole if isinstance(e, RequestHead)]
    assert heads == [e for e in split if isinstance(e, RequestHead)]


def outcome(data: bytes, pieces: list[int] | None) -> tuple[list[object], ProtocolError | None]:
    try:
        return parse_all(data, pieces), None
    except ProtocolError as exc:
        return [], exc


def test_the_mutations_are_reproducible_from_a_seed() -> None:
    first = [mutated_head(random.Random(7)) for _ in range(3)]
    assert first == [mutated_head(random.Random(7)) for _ in range(3)]
