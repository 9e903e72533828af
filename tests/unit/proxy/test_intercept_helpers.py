"""proxy/intercept.py's pure helpers: which secrets a leg must not carry, and the log's words
for a client that refused the interception certificate."""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

from egressgate.proxy.intercept import handshake_failure_why, head_leaks, leak_finder


class _Host:
    """Stands in for an InterceptHost (hashable by identity, like the real one)."""

    def __init__(self, *secrets: bytes) -> None:
        self.secrets = secrets


def _generation(number: int, pairs: list[tuple[bytes, Any]]) -> Any:
    return SimpleNamespace(number=number, policies=SimpleNamespace(all_secrets=tuple(pairs)))


def test_a_host_may_carry_its_own_secret_but_no_other() -> None:
    api, other = _Host(b"api-secret-123"), _Host(b"other-secret-456")
    gen = _generation(9001, [(b"api-secret-123", api), (b"other-secret-456", other)])
    to_api = leak_finder(gen, api)  # type: ignore[arg-type]
    assert to_api is not None
    assert not head_leaks(to_api, b"/x", [(b"authorization", b"Authorization", b"api-secret-123")])
    assert head_leaks(to_api, b"/x?k=other-secret-456", [])
    plain = leak_finder(gen, None)  # type: ignore[arg-type]
    assert plain is not None
    assert head_leaks(plain, b"/", [(b"x", b"X", b"api-secret-123")])


def test_no_secrets_no_finder() -> None:
    assert leak_finder(_generation(9002, []), None) is None  # type: ignore[arg-type]


def test_a_refused_certificate_is_explained() -> None:
    exc = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    exc.reason = "TLSV1_ALERT_UNKNOWN_CA"  # type: ignore[misc]
    why = handshake_failure_why(exc)
    assert "TLSV1_ALERT_UNKNOWN_CA" in why
    assert "refused the interception certificate" in why
    plain = handshake_failure_why(ssl.SSLError(1, "WRONG_VERSION_NUMBER"))
    assert "refused the interception certificate" not in plain
