"""refusal_response (the only place a Reason becomes HTTP bytes) and the Reason table of errors.py.

Every refusal is a complete HTTP/1.1 response: status from the Reason, the Reason code in
X-Egressgate-Reason, a plain-text body naming host and reason, and `Connection: close`. Nothing
a client controls (host, detail) may add a header or a body line.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import (
    ConfigError,
    EgressgateError,
    ProtocolError,
    ProxyFailure,
    Reason,
    Refused,
    ResolveError,
    UpstreamError,
)
from egressgate.proxy.refusal import (
    POLICY_HEADER,
    REASON_HEADER,
    TLS_ACCESS_DENIED_ALERT,
    refusal_response,
)

REFUSALS = [r for r in Reason if r.status >= 400]


class ParsedResponse:
    """A response parsed by llhttp (httptools), as a client would read it."""

    def __init__(self, data: bytes) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = False
        parser = httptools.HttpResponseParser(self)
        parser.feed_data(data)
        self.status = parser.get_status_code()
        assert self.complete, "the response must be complete"

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def body_lines(self) -> list[str]:
        return self.body.decode("utf-8").splitlines()


# ---------------------------------------------------------------------------------------------
# errors.py: the Reason table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(Reason), ids=[r.value for r in Reason])
def test_every_reason_has_a_status_and_a_text(reason: Reason) -> None:
    assert reason.status in {200, 400, 403, 407, 408, 414, 431, 501, 502, 503, 504}
    assert reason.text.strip()
    assert reason.value == reason.value.lower()
    assert " " not in reason.value  # a token for headers, logs and metric labels


def test_reason_codes_and_texts_are_unique() -> None:
    assert len({r.value for r in Reason}) == len(Reason)
    assert len({r.text for r in Reason}) == len(Reason)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (Reason.ALLOWED, 200),
        (Reason.HOST_NOT_ALLOWED, 403),
        (Reason.PRIVATE_ADDRESS, 403),
        (Reason.AUTH_REQUIRED, 407),
        (Reason.BAD_REQUEST, 400),
        (Reason.SMUGGLING, 400),
        (Reason.HEADER_TIMEOUT, 408),
        (Reason.URI_TOO_LONG, 414),
        (Reason.HEADERS_TOO_LARGE, 431),
        (Reason.UNSUPPORTED_METHOD, 501),
        (Reason.DNS_NXDOMAIN, 502),
        (Reason.TOO_MANY_CONNECTIONS, 503),
        (Reason.DNS_TIMEOUT, 504),
        (Reason.UPSTREAM_TIMEOUT, 504),
    ],
)
def test_reason_status_rows(reason: Reason, status: int) -> None:
    assert reason.status == status


def test_policy_reasons_are_exactly_the_403_and_407_ones() -> None:
    assert {r for r in Reason if r.is_policy} == {r for r in Reason if r.status in (403, 407)}


def test_exception_tree() -> None:
    for kind in (Refused, ProtocolError, ResolveError, UpstreamError):
        assert issubclass(kind, ProxyFailure)
    assert issubclass(ProxyFailure, EgressgateError)
    assert issubclass(ConfigError, EgressgateError)
    failure = Refused(Reason.HOST_NOT_ALLOWED, "evil.example")
    assert (failure.reason, failure.detail) == (Reason.HOST_NOT_ALLOWED, "evil.example")
    assert str(failure) == "host-not-allowed: evil.example"
    assert str(ProtocolError(Reason.BAD_REQUEST)) == "bad-request"


# ---------------------------------------------------------------------------------------------
# refusal_response
# ---------------------------------------------------------------------------------------------

PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@pytest.mark.parametrize("reason", REFUSALS, ids=[r.value for r in REFUSALS])
def test_status_line_reason_header_and_body_per_reason(reason: Reason) -> None:
    data = refusal_response(reason, "evil.example", "some detail", policy="default")
    status_line = data.split(b"\r\n", 1)[0].decode()
    # The reason phrase carries the code: the part of a refused CONNECT most clients print.
    phrase = f"{PHRASES[reason.status]} (egressgate: {reason.value})"
    assert status_line == f"HTTP/1.1 {reason.status} {phrase}"
    response = ParsedResponse(data)
    assert response.status == reason.status
    assert response.header(REASON_HEADER) == [reason.value]
    assert response.header(POLICY_HEADER) == ["default"]
    assert response.header("connection") == ["close"]
    assert response.header("content-type") == ["text/plain; charset=utf-8"]
    assert response.header("content-length") == [str(len(response.body))]
    assert response.body_lines() == [
        f"egressgate: {reason.status} {reason.value}",
        "host: evil.example",
        f"reason: {reason.text}",
        "detail: some detail",
    ]
    assert bool(response.header("proxy-authenticate")) is (reason.status == 407)


def test_without_host_detail_or_policy() -> None:
    response = ParsedResponse(refusal_response(Reason.BAD_REQUEST, None))
    assert response.body_lines() == [
        "egressgate: 400 bad-request",
        "host: (none)",
        f"reason: {Reason.BAD_REQUEST.text}",
    ]
    assert response.header(POLICY_HEADER) == []


def test_407_carries_proxy_authenticate_with_the_realm() -> None:
    # RFC 9110 §11.7.1: "The server generating a 407 response MUST send a Proxy-Authenticate
    # header field containing at least one challenge applicable to this proxy".
    default = ParsedResponse(refusal_response(Reason.AUTH_REQUIRED, "a.example"))
    assert default.header("proxy-authenticate") == ['Basic realm="egressgate"']
    corp = ParsedResponse(refusal_response(Reason.AUTH_REQUIRED, "a.example", realm="corp"))
    assert corp.header("proxy-authenticate") == ['Basic realm="corp"']


def test_realm_with_quotes_stays_one_quoted_string() -> None:
    # RFC 9110 §5.6.4: inside a quoted-string, '"' and '\' are sent as quoted-pairs.
    response = ParsedResponse(
        refusal_response(Reason.AUTH_REQUIRED, None, realm='a"b\\c\r\nX-Evil: 1')
    )
    assert response.header("proxy-authenticate") == ['Basic realm="a\\"b\\\\c??X-Evil: 1"']
    assert response.header("x-evil") == []


HOSTILE = [
    "evil.example\r\nSet-Cookie: session=stolen",
    "evil.example\nX-Injected: 1",
    "evil.example\rX-Injected: 1",
    "\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    "nul\x00byte",
    "caf\u00e9.example \u2028 \ud800",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[repr(h) for h in HOSTILE])
def test_cr_lf_in_host_detail_or_policy_cannot_inject_headers_or_lines(hostile: str) -> None:
    data = refusal_response(Reason.HOST_NOT_ALLOWED, hostile, hostile, policy=hostile)
    response = ParsedResponse(data)
    assert response.status == 403
    assert {name for name, _ in response.headers} == {
        "content-type",
        "content-length",
        "x-egressgate-reason",
        "x-egressgate-policy",
        "connection",
    }
    lines = response.body_lines()
    assert len(lines) == 4
    assert [line.split(":", 1)[0] for line in lines] == ["egressgate", "host", "reason", "detail"]
    assert data.count(b"\r\n\r\n") == 1  # one head: nothing can start a second message


@given(st.text(), st.text(), st.text(), st.sampled_from(REFUSALS))
def test_any_host_and_detail_give_one_well_formed_response(
    host: str, detail: str, policy: str, reason: Reason
) -> None:
    data = refusal_response(reason, host or None, detail, policy=policy or None)
    head, body = data.split(b"\r\n\r\n", 1)
    assert len(head.split(b"\r\n")) in (5, 6, 7)  # status line + 4 fixed (+ policy, + 407)
    response = ParsedResponse(data)
    assert response.status == reason.status
    assert response.body == body
    assert len(response.body_lines()) == (4 if detail else 3)


def test_long_detail_is_truncated() -> None:
    response = ParsedResponse(refusal_response(Reason.HOST_NOT_ALLOWED, "a", "x" * 10_000))
    assert len(response.body) < 1000


def test_tls_access_denied_alert_is_a_fatal_access_denied_record() -> None:
    # RFC 8446 §6: an alert record (content type 21) of length 2: level fatal(2),
    # description access_denied(49).
    alert = TLS_ACCESS_DENIED_ALERT
    assert alert == bytes([21, 3, 1, 0, 2, 2, 49])
