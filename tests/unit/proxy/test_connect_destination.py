"""connect_destination: CONNECT targets parsed and normalized once, refusals every time."""

from __future__ import annotations

import time

import pytest

from egressgate.errors import ProxyFailure
from egressgate.observe.record import AccessRecord
from egressgate.proxy import tunnel
from egressgate.proxy.tunnel import connect_destination


def _record() -> AccessRecord:
    return AccessRecord(time.time(), "127.0.0.1", "CONNECT", "tunnel")


def test_a_valid_target_is_normalized_and_remembered() -> None:
    first = connect_destination(b"API.Example.TEST.:443", _record())
    assert (first.host.text, first.port, first.connect) == ("api.example.test", 443, True)
    assert connect_destination(b"API.Example.TEST.:443", _record()) is first


@pytest.mark.parametrize("raw", [b"no-port.test", b"bad host.test:443", b"a.test:99999"])
def test_an_invalid_target_raises_every_time_and_is_not_stored(raw: bytes) -> None:
    for _ in range(2):
        with pytest.raises(ProxyFailure):
            connect_destination(raw, _record())
    assert raw not in tunnel._DESTINATIONS


def test_a_refused_host_is_named_in_the_record() -> None:
    record = _record()
    with pytest.raises(ProxyFailure):
        connect_destination(b"under_score..test:443", record)
    assert record.host == "under_score..test"


def test_the_cache_is_bounded() -> None:
    for number in range(tunnel._MAX_DESTINATIONS + 10):
        connect_destination(b"h%d.test:443" % number, _record())
    assert len(tunnel._DESTINATIONS) <= tunnel._MAX_DESTINATIONS
