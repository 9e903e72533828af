"""connect_destination: CONNECT targets parsed and normalized once, refusals every time."""

from __future__ import annotations

import ipaddress
import time

import pytest

from egressgate.config.model import Config
from egressgate.errors import ProxyFailure
from egressgate.http1.events import RequestHead
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity
from egressgate.proxy import gate, tunnel
from egressgate.proxy.gate import Refuse
from egressgate.proxy.tunnel import connect_destination
from egressgate.runtime.state import Generation, compile_generation


def _record() -> AccessRecord:
    return AccessRecord(time.time(), "127.0.0.1", "CONNECT", "tunnel")


def test_a_valid_target_is_normalized_and_remembered() -> None:
    first = connect_destination(b"API.Example.TEST.:443")
    assert (first.host.text, first.port, first.connect) == ("api.example.test", 443, True)
    assert connect_destination(b"API.Example.TEST.:443") is first


@pytest.mark.parametrize("raw", [b"no-port.test", b"bad host.test:443", b"a.test:99999"])
def test_an_invalid_target_raises_every_time_and_is_not_stored(raw: bytes) -> None:
    for _ in range(2):
        with pytest.raises(ProxyFailure):
            connect_destination(raw)
    assert raw not in tunnel._DESTINATIONS


def test_a_refused_host_is_named_in_the_record() -> None:
    gen = compile_generation(Config(), "", 1)
    identity = ClientIdentity(ipaddress.ip_address("127.0.0.1"))
    head = RequestHead(b"CONNECT", b"under_score..test:443", "1.1", [], True, 40)
    admission = tunnel.connect_admission(_Ctx(gen), identity, head)  # type: ignore[arg-type]
    assert isinstance(admission.next(), Refuse)
    record = gate.conclude(_record(), admission)
    assert record.host == "under_score..test"
    assert record.reason == "host-not-allowed"


class _Ctx:
    """The one thing connect_admission reads from the proxy context: the generation."""

    def __init__(self, gen: Generation) -> None:
        self.state = self
        self.current = gen


def test_the_cache_is_bounded() -> None:
    for number in range(tunnel._MAX_DESTINATIONS + 10):
        connect_destination(b"h%d.test:443" % number)
    assert len(tunnel._DESTINATIONS) <= tunnel._MAX_DESTINATIONS
