"""Pipelined requests (several requests in one write, before any answer) through the real proxy.

"allowed.test" maps to the origin; every other *.test name maps to a canary that must not be
reached. A refusal closes the client connection: requests pipelined after it must not reach
any origin.
"""

from __future__ import annotations

import json

from tests.integration.helpers_core import (
    http_request,
    ports_of,
    send_raw,
    start_proxy,
)
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory, pattern_bytes, sha256_hex
from tests.support.proxy import ProxyFactory


def test_pipelined_request_after_a_refused_one_is_never_sent(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.1")
    canary = origin_factory("canary", host="127.0.0.3")
    dns_server.records["*.test"] = [canary.host]
    dns_server.records["allowed.test"] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin, canary))
    allowed = f"http://allowed.test:{origin.port}"
    pipeline = (
        http_request(f"{allowed}/bytes/100")
        + http_request(f"http://denied.test:{canary.port}/")
        + http_request(f"{allowed}/status/201")
    )
    result = send_raw(proxy, pipeline)  # one write
    assert result.closed, "the connection must close after the refusal"
    responses = result.responses()
    assert [r.status for r in responses] == [200, 403]
    assert responses[0].body == pattern_bytes(100)
    assert responses[1].header("X-Egressgate-Reason") == "host-not-allowed"
    assert (responses[1].header("connection") or "").lower() == "close"
    proxy.wait_for_records(2)
    assert [r.path for r in origin.request_records()] == ["/bytes/100"]
    canary.assert_untouched()
    assert dns_server.query_count("denied.test") == 0
    assert [r["status"] for r in proxy.access_records()] == [200, 403]


def test_pipelined_request_after_a_malformed_one_is_never_sent(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.1")
    dns_server.records["allowed.test"] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin))
    allowed = f"http://allowed.test:{origin.port}"
    pipeline = (
        http_request(f"{allowed}/bytes/10")
        + b"POST "
        + allowed.encode()
        + b"/upload HTTP/1.1\r\nHost: allowed.test\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + http_request(f"{allowed}/status/202")
    )
    result = send_raw(proxy, pipeline)
    assert result.closed
    statuses = [r.status for r in result.responses()]
    # The malformed request may be detected while the first is still parsed (llhttp reads
    # the whole write): then only the refusal comes back. Never the third request's answer.
    assert statuses in ([200, 400], [400])
    assert "/status/202" not in [r.path for r in origin.request_records()]
    assert "/upload" not in [r.path for r in origin.request_records()]


def test_pipelined_allowed_requests_are_answered_in_order(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.1")
    dns_server.records["allowed.test"] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin))
    base = f"http://allowed.test:{origin.port}"
    pipeline = (
        http_request(f"{base}/slow?delay=0.3")  # a slow first answer must not be overtaken
        + http_request(f"{base}/bytes/10")
        + http_request(f"{base}/bytes/20", method="HEAD")
        + http_request(f"{base}/upload", method="POST", body=b"abc")
        + http_request(f"{base}/chunked/3000?chunk=700&seed=1")
        + http_request(f"{base}/status/204")
        + http_request(f"{base}/close/500?seed=2")
        + http_request(f"{base}/", close=True)
    )
    result = send_raw(proxy, pipeline)
    assert result.closed
    responses = result.responses(bodyless={2})
    assert [r.status for r in responses] == [200, 200, 200, 200, 200, 204, 200, 200]
    assert responses[0].body == b"slow\n"
    assert responses[1].body == pattern_bytes(10)
    assert responses[2].body == b""
    assert responses[2].header("content-length") == "20"
    assert json.loads(responses[3].body)["sha256"] == sha256_hex(b"abc")
    assert responses[4].body == pattern_bytes(3000, 1)
    assert responses[6].body == pattern_bytes(500, 2)
    assert responses[7].body == b"hello from origin"
    paths = [r.path for r in origin.request_records()]
    assert paths == [
        "/slow",
        "/bytes/10",
        "/bytes/20",
        "/upload",
        "/chunked/3000",
        "/status/204",
        "/close/500",
        "/",
    ]
    records = proxy.wait_for_records(8)
    assert [r["status"] for r in records] == [200, 200, 200, 200, 200, 204, 200, 200]
