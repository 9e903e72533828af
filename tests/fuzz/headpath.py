"""The checks of the request-head path, shared by the hypothesis fuzz tests and the atheris
target (fuzz/atheris_head.py). Pure: bytes in, AssertionError out when a property fails.

- `check_bytes(data)`: the whole head path (parser → semantics → normalize_host → render) raises
  only its own errors, respects the limits, and renders upstream heads that re-parse to the same
  request (see test_fuzz_head_path.py).
- `check_connect_fast_path(data, max_line, max_head)`: http1/connect_head.py gives None or
  exactly the full parser's result (see test_fuzz_connect_head.py).
"""

from __future__ import annotations

from egressgate.errors import ProtocolError
from egressgate.http1 import render
from egressgate.http1.connect_head import read_connect_head
from egressgate.http1.events import END, RequestHead, TunnelStart
from egressgate.http1.parser import RequestParser
from egressgate.http1.semantics import (
    HOP_BY_HOP,
    connection_tokens,
    end_to_end,
    expects_continue,
    parse_connect_target,
    parse_proxy_target,
    request_framing,
    wants_upgrade,
)
from egressgate.names.hostname import InvalidHost, normalize_host

MAX_LINE = 8 * 1024  # the config defaults (config/model.py Limits)
MAX_HEAD = 32 * 1024
# What the proxy itself adds to an upstream head (render.request_head).
ADDED = frozenset({b"host", b"via", b"x-forwarded-for", b"transfer-encoding", b"connection",
                   b"upgrade"})  # fmt: skip


def parse_all(data: bytes, pieces: list[int] | None = None) -> list[object]:
    """The parser's events for `data` fed whole (or cut at `pieces`); ProtocolError: raises."""
    parser = RequestParser(MAX_LINE, MAX_HEAD)
    if not pieces:
        return parser.feed(data)
    events: list[object] = []
    start = 0
    for cut in [*sorted(set(pieces)), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
        if any(isinstance(e, TunnelStart) for e in events):
            break  # the HTTP part is over: the connection hands the rest to the tunnel
    return events


def check_forward(head: RequestHead) -> None:
    """The plain-HTTP steps of proxy/forward.py, then property 3 on what they render."""
    target = parse_proxy_target(head.target)
    framing = request_framing(head)
    normalize_host(target.host)
    expects_continue(head)
    tokens = connection_tokens(head.headers)
    upgrade = wants_upgrade(head, tokens)
    headers = end_to_end(head.headers, tokens)
    upstream = render.request_head(
        head.method, target.path, target.authority, headers,
        upgrade=upgrade, chunked=framing.chunked, forwarded_for=b"10.0.0.7",
    )  # fmt: skip
    events = RequestParser(len(upstream) + 1, len(upstream) + 1).feed(upstream)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert len(heads) == 1, (upstream, events)
    again = heads[0]
    assert (again.method, again.target) == (head.method, target.path), upstream
    hosts = [value for name, _, value in again.headers if name == b"host"]
    assert hosts == [target.authority], upstream
    sent = {name for name, _, _ in head.headers if name not in HOP_BY_HOP}
    assert {name for name, _, _ in again.headers} <= sent | ADDED, upstream
    if upgrade is None:
        assert request_framing(again) == framing, upstream
        assert not any(isinstance(e, TunnelStart) for e in events), upstream
    if upgrade is None and not framing.has_body:
        assert events[-1] is END, upstream  # the request ends with its head: nothing smuggled


def check_head(head: RequestHead) -> None:
    assert len(head.target) <= MAX_LINE
    assert head.head_bytes <= MAX_HEAD
    try:
        if head.method == b"CONNECT":
            normalize_host(parse_connect_target(head.target).host)
        else:
            check_forward(head)
    except (ProtocolError, InvalidHost):
        pass  # a refusal with its reason: what the proxy answers 4xx for


def check_bytes(data: bytes) -> None:
    """Property 1-3 of test_fuzz_head_path.py on one input."""
    try:
        events = parse_all(data)
    except ProtocolError:
        return
    for event in events:
        assert isinstance(event, RequestHead | TunnelStart | bytes) or event is END, event
        if isinstance(event, RequestHead):
            check_head(event)


def full_parser(data: bytes, max_line: int, max_head: int) -> tuple[RequestHead, bytes] | None:
    events = RequestParser(max_line, max_head).feed(data)
    heads = [e for e in events if isinstance(e, RequestHead)]
    if not heads:
        return None
    tunnels = [e for e in events if isinstance(e, TunnelStart)]
    assert len(tunnels) == 1, events
    return heads[0], tunnels[0].rest


def check_connect_fast_path(data: bytes, max_line: int, max_head: int) -> None:
    """The fast path declines, or gives exactly the full parser's result."""
    fast = read_connect_head(data, max_line, max_head)
    if fast is None:
        return
    try:
        full = full_parser(data, max_line, max_head)
    except ProtocolError as exc:
        raise AssertionError(f"fast path accepted what the full parser refuses: {exc}") from None
    assert full is not None
    assert fast == full
