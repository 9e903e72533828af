"""Shared fixtures for every test: the loopback guard, the test CA, DNS, origins and the proxy.

- `loopback_guard` (autouse): the test process may send only to loopback; a test in which any
  connect/send/lookup to another address was attempted fails (even if the error was swallowed).
- `test_ca` (session): a `HarnessCA`; `test_ca.ca_pem_path` for curl/openssl/ssl.
- `dns_server`: a `DnsServer` on 127.0.0.1 (UDP+TCP), empty; add names with
  `dns_server.records["allowed.test"] = ["127.0.0.1"]`.
- `origin_factory(name="origin", **kwargs)` → a started `Origin` (kwargs: host, tls=test_ca,
  cert_names, client_ca, keepalive_timeout); `raw_origin_factory(...)` → a `RawOrigin`.
- `proxy_factory(config=None, **keys)` → a started `ProxyProcess` whose config is
  `base_proxy_config(...)` (listeners on 127.0.0.1:0, nameservers = the test DNS server, an
  access log in its own tmp dir, allow = []) updated with `config` and `keys`; a key whose value
  is `tests.support.proxy.OMIT` is left out of the file. Pass `command=` to run something else
  than `python -m egressgate` (the harness self-tests use tests/support/stub_proxy.py).

Everything a fixture starts is stopped in its finalizer. Hypothesis profiles: `fast` (default)
and `deep` (`HYPOTHESIS_PROFILE=deep`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support.dns import DnsServer
from tests.support.loopback_guard import GUARD, LoopbackGuard
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import OMIT, ProxyFactory, ProxyProcess, base_proxy_config
from tests.support.tlsca import HarnessCA

settings.register_profile(
    "fast",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# ---------------------------------------------------------------------------------------------
# Loopback guard
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _loopback_guard_installed() -> Iterator[LoopbackGuard]:
    GUARD.install()
    try:
        yield GUARD
    finally:
        GUARD.uninstall()


@pytest.fixture(autouse=True)
def loopback_guard(_loopback_guard_installed: LoopbackGuard) -> Iterator[LoopbackGuard]:
    """Fails the test if it (or any thread) tried to reach a non-loopback address."""
    guard = _loopback_guard_installed
    guard.take_violations()
    yield guard
    violations = guard.take_violations()
    if violations:
        pytest.fail(
            "loopback guard: this test tried to reach non-loopback destinations:\n"
            + "\n".join(f"  {v.call}({v.destination}): {v.reason}" for v in violations),
            pytrace=False,
        )


# ---------------------------------------------------------------------------------------------
# TLS, DNS, origins
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> HarnessCA:
    """The session's test CA (see tests/support/tlsca.py)."""
    return HarnessCA(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """An empty authoritative DNS server on 127.0.0.1 (UDP and TCP on one port)."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def origin_factory() -> Iterator[OriginFactory]:
    """Start `Origin`s (all closed at teardown): `origin_factory("canary", host="127.0.0.2")`."""
    started: list[Origin] = []

    def make(name: str = "origin", **kwargs: Any) -> Origin:
        origin = Origin(name, **kwargs)
        started.append(origin)
        return origin

    try:
        yield make
    finally:
        for origin in reversed(started):
            origin.close()


@pytest.fixture
def raw_origin_factory() -> Iterator[RawOriginFactory]:
    """Start `RawOrigin`s (all closed at teardown): `raw_origin_factory(mode="serve", ...)`."""
    started: list[RawOrigin] = []

    def make(name: str = "raw", **kwargs: Any) -> RawOrigin:
        server = RawOrigin(name, **kwargs)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(started):
            server.close()


@pytest.fixture
def origin(origin_factory: OriginFactory) -> Origin:
    """A plain HTTP origin named "origin" on 127.0.0.1."""
    return origin_factory("origin")


# ---------------------------------------------------------------------------------------------
# The proxy
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def proxy_factory(dns_server: DnsServer, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start real proxy processes (each in tmp_path/proxy-N; all killed at teardown)."""
    started: list[ProxyProcess] = []
    counter = itertools.count(1)

    def make(
        config: Mapping[str, Any] | None = None,
        /,
        *,
        start_timeout: float = 15.0,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        **keys: Any,
    ) -> ProxyProcess:
        workdir = tmp_path / f"proxy-{next(counter)}"
        workdir.mkdir()
        merged = base_proxy_config(dns_server.address, workdir)
        merged.update(config or {})
        merged.update(keys)
        final = {k: v for k, v in merged.items() if v is not OMIT}
        proxy = ProxyProcess(final, workdir, command=command, env=env, start_timeout=start_timeout)
        started.append(proxy)
        return proxy.start()

    try:
        yield make
    finally:
        for proxy in reversed(started):
            proxy.close()
